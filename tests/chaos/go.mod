module oodtest/chaosproxy

go 1.26.0
