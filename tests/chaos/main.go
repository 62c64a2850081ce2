// chaos-proxy: a fault-injecting TLS proxy between the hook and the local
// test API server (tests/cluster/up), used by tests/e2e_chaos.rs.
//
// It terminates TLS (HTTP/2 or HTTP/1.1, chosen by ALPN as the API server
// does) with a certificate it signs at start-up with the test cluster's CA,
// forwards every request to the real API server, and injects the faults its
// plan asks for — per connection (refuse, stall the TLS handshake, GOAWAY
// before any stream) or per request (an error status with or without
// Retry-After, a reset before or after the response headers, a stream
// abort, delayed headers or body, a graceful GOAWAY after the response).
// See README.md beside this file for the plan format and the fault table.
//
//	chaos-proxy -upstream https://127.0.0.1:16443 -ca ca.crt -ca-key ca.key \
//	    -plan '{"rules":[{"fault":"status","status":503,"first":1}]}' -events ev.jsonl
//
// Prints "listening 127.0.0.1:PORT" on stdout once it accepts connections,
// appends one JSON line per connection and per request to -events, and exits
// when its stdin closes, so it never outlives the test that started it. It
// never logs headers: the bearer token it forwards stays out of its output.
package main

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"encoding/pem"
	"errors"
	"flag"
	"fmt"
	"io"
	"log"
	"math/big"
	mathrand "math/rand"
	"net"
	"net/http"
	"os"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// Faults that act on a whole connection, before any HTTP request.
var connFaults = map[string]bool{
	"refuse":     true, // accept, then reset the TCP connection at once
	"tls_stall":  true, // accept, never answer the TLS handshake (or only after delay_ms)
	"goaway_now": true, // handshake, then an HTTP/2 GOAWAY (last stream 0) and close
}

// Faults that act on one request.
var requestFaults = map[string]bool{
	"status":         true, // answer `status` (with Retry-After if given) without forwarding
	"reset_request":  true, // read the request, reset the TCP connection, never forward
	"reset_response": true, // forward, send the headers and half the body, reset the TCP connection
	"abort_stream":   true, // like reset_response, but only this stream (HTTP/2 RST_STREAM)
	"delay_headers":  true, // wait delay_ms, then forward
	"delay_body":     true, // forward, send the headers, wait delay_ms, then the body
	"goaway":         true, // forward; the response closes the connection (HTTP/2: graceful GOAWAY)
	"huge_body":      true, // answer 200 with a JSON body of size_mb MiB, streamed, without forwarding
}

// Rule is one fault and which connections or requests it hits. With no
// selector it hits every match; `first`, `every` and `share` pick the first
// N matches, every k-th match, or each match with probability p (seeded).
type Rule struct {
	Fault      string  `json:"fault"`
	Status     int     `json:"status,omitempty"`
	RetryAfter string  `json:"retry_after,omitempty"`
	DelayMS    int     `json:"delay_ms,omitempty"`
	SizeMB     int     `json:"size_mb,omitempty"` // huge_body's size
	Path       string  `json:"path,omitempty"`    // regexp on the request path
	Method     string  `json:"method,omitempty"`  // e.g. PATCH
	First      int     `json:"first,omitempty"`
	Every      int     `json:"every,omitempty"`
	Share      float64 `json:"share,omitempty"`

	re      *regexp.Regexp
	rng     *mathrand.Rand
	matches int
}

// Plan is the list of rules; the first rule that matches and selects wins.
type Plan struct {
	Seed  int64   `json:"seed"`
	Rules []*Rule `json:"rules"`

	mu sync.Mutex
}

func parsePlan(text string) (*Plan, error) {
	if strings.HasPrefix(text, "@") {
		b, err := os.ReadFile(text[1:])
		if err != nil {
			return nil, err
		}
		text = string(b)
	}
	dec := json.NewDecoder(strings.NewReader(text))
	dec.DisallowUnknownFields()
	plan := &Plan{}
	if err := dec.Decode(plan); err != nil {
		return nil, fmt.Errorf("plan: %w", err)
	}
	for i, r := range plan.Rules {
		if err := r.validate(); err != nil {
			return nil, fmt.Errorf("plan rule %d (%s): %w", i, r.Fault, err)
		}
		r.rng = mathrand.New(mathrand.NewSource(plan.Seed + int64(i)))
	}
	return plan, nil
}

func (r *Rule) validate() error {
	if !connFaults[r.Fault] && !requestFaults[r.Fault] {
		return errors.New("unknown fault")
	}
	selectors := 0
	for _, set := range []bool{r.First > 0, r.Every > 0, r.Share > 0} {
		if set {
			selectors++
		}
	}
	if selectors > 1 {
		return errors.New("give at most one of first, every, share")
	}
	if r.Share > 1 || r.First < 0 || r.Every < 0 || r.DelayMS < 0 {
		return errors.New("selector or delay out of range")
	}
	if connFaults[r.Fault] && (r.Path != "" || r.Method != "") {
		return errors.New("path and method apply to request faults only")
	}
	if r.Fault == "status" && (r.Status < 400 || r.Status > 599) {
		return errors.New("status needs an error status (400-599)")
	}
	if strings.HasPrefix(r.Fault, "delay_") && r.DelayMS == 0 {
		return errors.New("needs delay_ms")
	}
	var err error
	r.re, err = regexp.Compile(r.Path)
	return err
}

// pick returns the rule that hits this connection (method and path empty)
// or request, or nil. Every matching rule counts the event, hit or not.
func (p *Plan) pick(conn bool, method, path string) *Rule {
	p.mu.Lock()
	defer p.mu.Unlock()
	for _, r := range p.Rules {
		if connFaults[r.Fault] != conn || !r.re.MatchString(path) ||
			(r.Method != "" && !strings.EqualFold(r.Method, method)) {
			continue
		}
		r.matches++
		hit := true
		switch {
		case r.First > 0:
			hit = r.matches <= r.First
		case r.Every > 0:
			hit = r.matches%r.Every == 0
		case r.Share > 0:
			hit = r.rng.Float64() < r.Share
		}
		if hit {
			return r
		}
	}
	return nil
}

// Event is one line of the -events file.
type Event struct {
	TMS    int64  `json:"t_ms"` // milliseconds since the proxy started
	Kind   string `json:"kind"` // conn or request
	Conn   int64  `json:"conn"`
	Proto  string `json:"proto,omitempty"`
	Method string `json:"method,omitempty"`
	Path   string `json:"path,omitempty"`
	Fault  string `json:"fault"` // "none" when forwarded untouched
	Status int    `json:"status,omitempty"`
	// For an answer: the FlowSchema (UID) that classified the request,
	// from the API server's X-Kubernetes-PF-FlowSchema-UID header.
	FlowSchema string `json:"flow_schema,omitempty"`
}

type proxy struct {
	plan     *Plan
	upstream string
	client   *http.Client
	tls      *tls.Config
	start    time.Time
	conns    chan net.Conn
	nextConn atomic.Int64

	evMu   sync.Mutex
	events *json.Encoder
}

func (p *proxy) event(e Event) {
	e.TMS = time.Since(p.start).Milliseconds()
	if e.Fault == "" {
		e.Fault = "none"
	}
	p.evMu.Lock()
	defer p.evMu.Unlock()
	if p.events != nil {
		_ = p.events.Encode(e)
	}
}

// countedConn is the raw TCP connection under TLS, with its number, so a
// request handler can reset the connection it arrived on.
type countedConn struct {
	net.Conn
	id int64
}

type connKey struct{}

// reset closes a connection with a TCP RST instead of a FIN.
func reset(c net.Conn) {
	if cc, ok := c.(*countedConn); ok {
		c = cc.Conn
	}
	if tcp, ok := c.(*net.TCPConn); ok {
		_ = tcp.SetLinger(0)
	}
	_ = c.Close()
}

func (p *proxy) serveConn(raw net.Conn) {
	conn := &countedConn{Conn: raw, id: p.nextConn.Add(1)}
	rule := p.plan.pick(true, "", "")
	fault := ""
	if rule != nil {
		fault = rule.Fault
	}
	p.event(Event{Kind: "conn", Conn: conn.id, Fault: fault})
	switch fault {
	case "refuse":
		reset(conn)
		return
	case "tls_stall":
		if rule.DelayMS == 0 {
			_, _ = io.Copy(io.Discard, conn) // until the client gives up
			_ = conn.Close()
			return
		}
		time.Sleep(time.Duration(rule.DelayMS) * time.Millisecond)
	case "goaway_now":
		p.goawayNow(conn)
		return
	}
	p.conns <- tls.Server(conn, p.tls)
}

// goawayNow completes the TLS handshake and, for an HTTP/2 client, sends
// SETTINGS and GOAWAY(last stream 0, NO_ERROR) as a server shutting down
// does, so none of the client's requests on it were processed.
func (p *proxy) goawayNow(conn net.Conn) {
	defer conn.Close()
	tc := tls.Server(conn, p.tls)
	if err := tc.Handshake(); err != nil || tc.ConnectionState().NegotiatedProtocol != "h2" {
		return
	}
	preface := make([]byte, 24)
	if _, err := io.ReadFull(tc, preface); err != nil {
		return
	}
	settings := []byte{0, 0, 0, 0x4, 0, 0, 0, 0, 0}
	goaway := []byte{0, 0, 8, 0x7, 0, 0, 0, 0, 0 /* last stream */, 0, 0, 0, 0 /* NO_ERROR */, 0, 0, 0, 0}
	_, _ = tc.Write(append(settings, goaway...))
	_ = tc.SetReadDeadline(time.Now().Add(500 * time.Millisecond))
	_, _ = io.Copy(io.Discard, tc)
}

func (p *proxy) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	conn, _ := r.Context().Value(connKey{}).(*countedConn)
	rule := p.plan.pick(false, r.Method, r.URL.Path)
	fault := ""
	if rule != nil {
		fault = rule.Fault
	}
	ev := Event{Kind: "request", Proto: r.Proto, Method: r.Method, Path: r.URL.Path, Fault: fault}
	if conn != nil {
		ev.Conn = conn.id
	}
	if fault == "status" {
		ev.Status = rule.Status
	}
	p.event(ev)

	switch fault {
	case "status":
		writeStatus(w, rule.Status, rule.RetryAfter, fmt.Sprintf("chaos-proxy injected %d", rule.Status))
		return
	case "huge_body":
		// A well-formed answer, far larger than any real one: the client
		// must stop reading at its own limit.
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(http.StatusOK)
		chunk := strings.Repeat(" ", 64*1024)
		_, _ = io.WriteString(w, `{"kind":"Status","padding":"`)
		for i := 0; i < rule.SizeMB*16; i++ {
			if _, err := io.WriteString(w, chunk); err != nil {
				return
			}
		}
		_, _ = io.WriteString(w, `"}`)
		return
	case "reset_request":
		_, _ = r.Body.Read(make([]byte, 1))
		if conn != nil {
			reset(conn)
		}
		panic(http.ErrAbortHandler)
	case "delay_headers":
		if !sleep(r.Context(), rule.DelayMS) {
			return
		}
	}

	resp, body, err := p.forward(r)
	if err != nil {
		writeStatus(w, http.StatusBadGateway, "", "chaos-proxy: upstream: "+err.Error())
		return
	}
	answer := Event{Kind: "answer", Conn: ev.Conn, Method: r.Method, Path: r.URL.Path, Fault: fault,
		Status: resp.StatusCode, FlowSchema: resp.Header.Get("X-Kubernetes-PF-FlowSchema-UID")}
	p.event(answer)
	for k, vs := range resp.Header {
		if !hopByHop(k) {
			w.Header()[k] = vs
		}
	}
	w.Header().Set("Content-Length", strconv.Itoa(len(body)))
	if fault == "goaway" {
		w.Header().Set("Connection", "close")
	}
	w.WriteHeader(resp.StatusCode)
	flusher, _ := w.(http.Flusher)
	switch fault {
	case "reset_response", "abort_stream":
		_, _ = w.Write(body[:len(body)/2])
		if flusher != nil {
			flusher.Flush()
		}
		if fault == "reset_response" && conn != nil {
			reset(conn)
		}
		panic(http.ErrAbortHandler)
	case "delay_body":
		if flusher != nil {
			flusher.Flush()
		}
		if !sleep(r.Context(), rule.DelayMS) {
			return
		}
	}
	_, _ = w.Write(body)
}

// forward sends the request to the real API server and reads its answer.
func (p *proxy) forward(r *http.Request) (*http.Response, []byte, error) {
	out, err := http.NewRequestWithContext(r.Context(), r.Method, p.upstream+r.URL.RequestURI(), r.Body)
	if err != nil {
		return nil, nil, err
	}
	for k, vs := range r.Header {
		if !hopByHop(k) {
			out.Header[k] = vs
		}
	}
	out.ContentLength = r.ContentLength
	resp, err := p.client.Do(out)
	if err != nil {
		return nil, nil, err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	return resp, body, err
}

func hopByHop(name string) bool {
	switch http.CanonicalHeaderKey(name) {
	case "Connection", "Keep-Alive", "Proxy-Connection", "Te", "Trailer", "Transfer-Encoding", "Upgrade", "Content-Length":
		return true
	}
	return false
}

// writeStatus answers as the API server does: a v1 Status object.
func writeStatus(w http.ResponseWriter, code int, retryAfter, message string) {
	reasons := map[int]string{429: "TooManyRequests", 500: "InternalError", 502: "BadGateway",
		503: "ServiceUnavailable", 504: "Timeout"}
	body, _ := json.Marshal(map[string]any{
		"kind": "Status", "apiVersion": "v1", "metadata": map[string]any{},
		"status": "Failure", "message": message, "reason": reasons[code], "code": code,
	})
	if retryAfter != "" {
		w.Header().Set("Retry-After", retryAfter)
	}
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Content-Length", strconv.Itoa(len(body)))
	w.WriteHeader(code)
	_, _ = w.Write(body)
}

// sleep waits ms milliseconds; false if the client went away first.
func sleep(ctx context.Context, ms int) bool {
	t := time.NewTimer(time.Duration(ms) * time.Millisecond)
	defer t.Stop()
	select {
	case <-t.C:
		return true
	case <-ctx.Done():
		return false
	}
}

// chanListener hands the connections serveConn let through to http.Server.
type chanListener struct {
	conns chan net.Conn
	addr  net.Addr
}

func (l *chanListener) Accept() (net.Conn, error) { return <-l.conns, nil }
func (l *chanListener) Close() error              { return nil }
func (l *chanListener) Addr() net.Addr            { return l.addr }

// serverCert makes a serving certificate for 127.0.0.1/localhost, signed
// by the test cluster's CA, so clients trusting that CA trust the proxy.
func serverCert(caCertFile, caKeyFile string) (tls.Certificate, *x509.CertPool, error) {
	var none tls.Certificate
	certPEM, err := os.ReadFile(caCertFile)
	if err != nil {
		return none, nil, err
	}
	keyPEM, err := os.ReadFile(caKeyFile)
	if err != nil {
		return none, nil, err
	}
	cb, _ := pem.Decode(certPEM)
	kb, _ := pem.Decode(keyPEM)
	if cb == nil || kb == nil {
		return none, nil, errors.New("CA certificate or key is not PEM")
	}
	ca, err := x509.ParseCertificate(cb.Bytes)
	if err != nil {
		return none, nil, err
	}
	var caKey any
	if caKey, err = x509.ParsePKCS8PrivateKey(kb.Bytes); err != nil {
		if caKey, err = x509.ParseECPrivateKey(kb.Bytes); err != nil {
			return none, nil, fmt.Errorf("CA key: %w", err)
		}
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return none, nil, err
	}
	serial, _ := rand.Int(rand.Reader, big.NewInt(1<<62))
	tmpl := &x509.Certificate{
		SerialNumber: serial,
		Subject:      pkix.Name{CommonName: "chaos-proxy"},
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(24 * time.Hour),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		IPAddresses:  []net.IP{net.IPv4(127, 0, 0, 1), net.IPv6loopback},
		DNSNames:     []string{"localhost"},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca, &key.PublicKey, caKey)
	if err != nil {
		return none, nil, err
	}
	pool := x509.NewCertPool()
	pool.AddCert(ca)
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key}, pool, nil
}

func main() {
	listen := flag.String("listen", "127.0.0.1:0", "address to listen on (port 0: any free port)")
	upstream := flag.String("upstream", "", "the real API server, https://HOST:PORT")
	caFile := flag.String("ca", "", "the test CA's certificate (trusted for the upstream, signs ours)")
	caKeyFile := flag.String("ca-key", "", "the test CA's private key")
	planText := flag.String("plan", `{"rules":[]}`, "the fault plan as JSON, or @FILE")
	eventsFile := flag.String("events", "", "append one JSON line per connection and request here")
	flag.Parse()
	fail := func(err error) {
		fmt.Fprintln(os.Stderr, "chaos-proxy:", err)
		os.Exit(2)
	}
	if *upstream == "" || *caFile == "" || *caKeyFile == "" {
		fail(errors.New("-upstream, -ca and -ca-key are required"))
	}
	plan, err := parsePlan(*planText)
	if err != nil {
		fail(err)
	}
	cert, pool, err := serverCert(*caFile, *caKeyFile)
	if err != nil {
		fail(err)
	}
	p := &proxy{
		plan:     plan,
		upstream: strings.TrimSuffix(*upstream, "/"),
		client: &http.Client{Transport: &http.Transport{
			TLSClientConfig:     &tls.Config{RootCAs: pool},
			ForceAttemptHTTP2:   true,
			MaxIdleConnsPerHost: 64,
		}},
		tls:   &tls.Config{Certificates: []tls.Certificate{cert}, NextProtos: []string{"h2", "http/1.1"}},
		start: time.Now(),
		conns: make(chan net.Conn),
	}
	if *eventsFile != "" {
		f, err := os.OpenFile(*eventsFile, os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o600)
		if err != nil {
			fail(err)
		}
		p.events = json.NewEncoder(f)
	}
	ln, err := net.Listen("tcp", *listen)
	if err != nil {
		fail(err)
	}
	srv := &http.Server{
		Handler: p,
		ConnContext: func(ctx context.Context, c net.Conn) context.Context {
			if tc, ok := c.(*tls.Conn); ok {
				c = tc.NetConn()
			}
			return context.WithValue(ctx, connKey{}, c)
		},
		// Handshake errors and aborted streams are what this proxy is for.
		ErrorLog: log.New(io.Discard, "", 0),
	}
	go func() { _ = srv.Serve(&chanListener{conns: p.conns, addr: ln.Addr()}) }()
	go func() {
		_, _ = io.Copy(io.Discard, os.Stdin)
		os.Exit(0)
	}()
	fmt.Printf("listening %s\n", ln.Addr())
	os.Stdout.Sync()
	for {
		c, err := ln.Accept()
		if err != nil {
			fail(err)
		}
		go p.serveConn(c)
	}
}
