module oodbench/rawssa

go 1.26.0
