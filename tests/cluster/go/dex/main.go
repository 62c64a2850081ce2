// Command dex-server runs the real Dex OpenID Connect provider (the
// github.com/dexidp/dex/server library, in-memory storage, local password
// database) for the local test cluster.
//
// It replaces Dex's own cmd/dex only because that command also links Dex's
// gRPC admin API, whose published api/v2 module lags behind the server
// module on the Go module proxy and does not compile against it. The OIDC
// server itself is unchanged Dex. Configuration is Dex's own shape for
// clients and passwords, read from the JSON file given as the only argument.
//
// One workaround: in this Dex version, rotating a refresh token issued by
// the local password connector deadlocks the in-memory storage (the
// rotation callback runs under the storage mutex and reads the offline
// session, which takes the same mutex). serialRefresh runs that callback
// under a lock of its own instead, keeping rotation and its
// "claimed twice" check.
package main

import (
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"net/http"
	"os"
	"sync"
	"time"

	"github.com/AppsFlyer/go-sundheit"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/dexidp/dex/server"
	"github.com/dexidp/dex/server/signer"
	"github.com/dexidp/dex/server/tokens"
	"github.com/dexidp/dex/storage"
	"github.com/dexidp/dex/storage/memory"
)

type config struct {
	Issuer           string             `json:"issuer"`
	Listen           string             `json:"listen"`
	TLSCert          string             `json:"tlsCert"`
	TLSKey           string             `json:"tlsKey"`
	IDTokensValidFor string             `json:"idTokensValidFor"`
	GrantTypes       []string           `json:"grantTypes"`
	Clients          []storage.Client   `json:"staticClients"`
	Passwords        []storage.Password `json:"staticPasswords"`
}

func main() {
	if err := run(); err != nil {
		fmt.Fprintln(os.Stderr, "dex-server:", err)
		os.Exit(1)
	}
}

func run() error {
	if len(os.Args) != 2 {
		return fmt.Errorf("usage: dex-server CONFIG.json")
	}
	raw, err := os.ReadFile(os.Args[1])
	if err != nil {
		return err
	}
	var c config
	if err := json.Unmarshal(raw, &c); err != nil {
		return fmt.Errorf("parsing %s: %w", os.Args[1], err)
	}
	ttl, err := time.ParseDuration(c.IDTokensValidFor)
	if err != nil {
		return fmt.Errorf("idTokensValidFor: %w", err)
	}
	logger := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelInfo}))
	now := func() time.Time { return time.Now().UTC() }

	var s storage.Storage = &serialRefresh{Storage: memory.New(logger)}
	s = storage.WithStaticClients(s, c.Clients)
	s = storage.WithStaticPasswords(s, c.Passwords, logger)
	s = storage.WithStaticConnectors(s, []storage.Connector{{ID: "local", Name: "Email", Type: "local"}})

	ctx := context.Background()
	sign, err := (&signer.LocalConfig{KeysRotationPeriod: "6h"}).Open(ctx, s, ttl, now, logger)
	if err != nil {
		return fmt.Errorf("signer: %w", err)
	}
	refresh, err := tokens.NewRefreshTokenPolicy(logger, false, "24h", "48h", "")
	if err != nil {
		return fmt.Errorf("refresh policy: %w", err)
	}
	srv, err := server.NewServer(ctx, server.Config{
		Issuer:             c.Issuer,
		Storage:            s,
		Logger:             logger,
		Now:                now,
		Signer:             sign,
		IDTokensValidFor:   ttl,
		AllowedGrantTypes:  c.GrantTypes,
		SkipApprovalScreen: true,
		PasswordConnector:  "local",
		RefreshTokenPolicy: refresh,
		PrometheusRegistry: prometheus.NewRegistry(),
		HealthChecker:      gosundheit.New(),
	})
	if err != nil {
		return fmt.Errorf("starting Dex: %w", err)
	}
	logger.Info("listening", "addr", c.Listen, "issuer", c.Issuer)
	return (&http.Server{Addr: c.Listen, Handler: srv, ReadHeaderTimeout: 10 * time.Second}).
		ListenAndServeTLS(c.TLSCert, c.TLSKey)
}

// serialRefresh serialises refresh-token updates itself, so the updater runs
// without holding the memory storage's lock (see the package comment).
type serialRefresh struct {
	storage.Storage
	mu sync.Mutex
}

func (s *serialRefresh) UpdateRefreshToken(ctx context.Context, id string, updater func(storage.RefreshToken) (storage.RefreshToken, error)) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	old, err := s.Storage.GetRefresh(ctx, id)
	if err != nil {
		return err
	}
	updated, err := updater(old)
	if err != nil {
		return err
	}
	return s.Storage.UpdateRefreshToken(ctx, id, func(storage.RefreshToken) (storage.RefreshToken, error) {
		return updated, nil
	})
}
