package cli

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"flag"
	"io"
	"math/big"
	"net"
	"net/http"
	"net/http/cookiejar"
	"net/url"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/outboxkit/outboxkit/internal/testenv"
)

const serveToken = "serve-test-token-7c1e5a9b3d"

// runServeEnv runs runServe with the given environment and returns its
// error and what it wrote to stderr.
func runServeEnv(t *testing.T, environ map[string]string, args ...string) (string, error) {
	t.Helper()
	var out, errOut syncBuffer
	env := &Env{Stdout: &out, Stderr: &errOut, Getenv: func(k string) string { return environ[k] }}
	err := runServe(context.Background(), env, args)
	return out.String() + errOut.String(), err
}

// serve refuses to start without users, says how to add them, and never
// shows a token, not in errors and not in --help.
func TestServeNeedsUsers(t *testing.T) {
	t.Parallel()
	db := testenv.NewDB(t)
	_, err := runServeEnv(t, map[string]string{"DATABASE_URL": db.URL})
	if !errors.Is(err, errUsage) || !strings.Contains(err.Error(), "no dashboard users: pass --users-file") {
		t.Errorf("no users: %v", err)
	}
	dir := t.TempDir()
	empty := filepath.Join(dir, "empty")
	os.WriteFile(empty, []byte("# nobody yet\n"), 0o600)
	if _, err := runServeEnv(t, map[string]string{"DATABASE_URL": db.URL}, "--users-file", empty); err == nil || !strings.Contains(err.Error(), "no dashboard users") {
		t.Errorf("empty users file: %v", err)
	}
	bad := filepath.Join(dir, "bad")
	os.WriteFile(bad, []byte("alice:"+serveToken+"\nbob "+serveToken+"\n"), 0o600)
	_, err = runServeEnv(t, map[string]string{"DATABASE_URL": db.URL}, "--users-file", bad)
	if err == nil || !strings.Contains(err.Error(), "line 2: use name:token") || strings.Contains(err.Error(), serveToken) {
		t.Errorf("bad users file: %v", err)
	}
	_, err = runServeEnv(t, map[string]string{"DATABASE_URL": db.URL, "OUTBOXKIT_DASHBOARD_USERS": "alice:" + serveToken[:10]})
	if err == nil || !strings.Contains(err.Error(), "shorter than 16") || strings.Contains(err.Error(), serveToken[:10]) {
		t.Errorf("short token: %v", err)
	}
	out, err := runServeEnv(t, map[string]string{"OUTBOXKIT_DASHBOARD_USERS": "alice:" + serveToken}, "-h")
	if !errors.Is(err, flag.ErrHelp) || !strings.Contains(out, "-users-file") || strings.Contains(out, serveToken) {
		t.Errorf("help: %v\n%s", err, out)
	}
	if _, err := runServeEnv(t, map[string]string{"DATABASE_URL": db.URL, "OUTBOXKIT_DASHBOARD_USERS": "alice:" + serveToken},
		"--tls-cert", "x.pem"); err == nil || !strings.Contains(err.Error(), "go together") {
		t.Errorf("tls cert without key: %v", err)
	}
}

var listeningAt = regexp.MustCompile(`dashboard listening.* addr=(\S+)`)

// startServe runs `outboxkit serve` until the test ends and returns its
// base URL and log.
func startServe(t *testing.T, environ map[string]string, args ...string) (string, *syncBuffer, func() error) {
	t.Helper()
	var out, errOut syncBuffer
	env := &Env{Stdout: &out, Stderr: &errOut, Getenv: func(k string) string { return environ[k] }}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() {
		done <- runServe(ctx, env, append([]string{"--listen", "127.0.0.1:0", "--sample-every", "200ms"}, args...))
	}()
	var once sync.Once
	var stopErr error
	stop := func() error {
		once.Do(func() {
			cancel()
			select {
			case stopErr = <-done:
			case <-time.After(30 * time.Second):
				stopErr = errors.New("serve did not stop within 30s")
			}
		})
		return stopErr
	}
	t.Cleanup(func() { stop() })
	var addr string
	deadline := time.Now().Add(30 * time.Second)
	for addr == "" {
		if m := listeningAt.FindStringSubmatch(errOut.String()); m != nil {
			addr = m[1]
			break
		}
		select {
		case err := <-done:
			t.Fatalf("serve exited: %v\n%s", err, errOut.String())
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("serve did not start:\n%s", errOut.String())
		}
		time.Sleep(20 * time.Millisecond)
	}
	return addr, &errOut, stop
}

var csrfInput = regexp.MustCompile(`name="csrf" value="([^"]+)"`)

// signInOver signs in through the real server and returns the client.
func signInOver(t *testing.T, hc *http.Client, base, name, token string) *http.Response {
	t.Helper()
	resp, err := hc.Get(base + "/signin")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	m := csrfInput.FindStringSubmatch(string(body))
	if m == nil {
		t.Fatalf("sign-in form without csrf: %d\n%s", resp.StatusCode, body)
	}
	req, _ := http.NewRequest(http.MethodPost, base+"/signin", strings.NewReader(url.Values{"csrf": {m[1]}, "name": {name}, "token": {token}}.Encode()))
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	req.Header.Set("Origin", base)
	resp, err = hc.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	return resp
}

func newTestClient(t *testing.T, tlsConfig *tls.Config) *http.Client {
	jar, _ := cookiejar.New(nil)
	tr := &http.Transport{TLSClientConfig: tlsConfig}
	t.Cleanup(tr.CloseIdleConnections)
	return &http.Client{Jar: jar, Transport: tr, Timeout: 30 * time.Second,
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
}

// outboxkit serve listens, signs people in from a users file, shows pages
// with the security headers, and stops cleanly; its log names users, never
// tokens.
func TestServeCommand(t *testing.T) {
	t.Parallel()
	db := testenv.NewDB(t)
	users := filepath.Join(t.TempDir(), "users")
	os.WriteFile(users, []byte("# on-call\nalice:"+serveToken+"\n"), 0o644)
	addr, logs, stop := startServe(t, map[string]string{"DATABASE_URL": db.URL, "OUTBOXKIT_DASHBOARD_USERS": "bob:" + serveToken + "-bob"},
		"--users-file", users, "--log-format", "text")
	base := "http://" + addr
	if !strings.HasPrefix(addr, "127.0.0.1:") {
		t.Errorf("listening on %s", addr)
	}
	hc := newTestClient(t, nil)
	resp, err := hc.Get(base + "/")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusSeeOther || resp.Header.Get("Content-Security-Policy") == "" {
		t.Errorf("unauthenticated GET /: %d %v", resp.StatusCode, resp.Header)
	}
	if r := signInOver(t, hc, base, "alice", "wrong-token-123456789"); r.StatusCode != http.StatusUnauthorized {
		t.Errorf("wrong token: %d", r.StatusCode)
	}
	if r := signInOver(t, newTestClient(t, nil), base, "bob", serveToken+"-bob"); r.StatusCode != http.StatusSeeOther {
		t.Errorf("bob from the environment: %d", r.StatusCode)
	}
	if r := signInOver(t, hc, base, "alice", serveToken); r.StatusCode != http.StatusSeeOther {
		t.Fatalf("alice from the file: %d", r.StatusCode)
	}
	resp, err = hc.Get(base + "/")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK || !strings.Contains(string(body), "Parked events") {
		t.Fatalf("overview: %d\n%s", resp.StatusCode, body)
	}
	if err := stop(); err != nil {
		t.Fatalf("stop: %v", err)
	}
	out := logs.String()
	for _, want := range []string{"dashboard listening", "users=\"[alice bob]\"", "users file is readable by other accounts", "signed in", "dashboard stopped"} {
		if !strings.Contains(out, want) {
			t.Errorf("log lacks %q:\n%s", want, out)
		}
	}
	if strings.Contains(out, serveToken) {
		t.Errorf("a token is in the log:\n%s", out)
	}
	if _, err := net.DialTimeout("tcp", addr, time.Second); err == nil {
		t.Error("still listening after stop")
	}
}

// Over TLS the session cookie is Secure and __Host- prefixed.
func TestServeTLS(t *testing.T) {
	t.Parallel()
	db := testenv.NewDB(t)
	certFile, keyFile, pool := selfSigned(t)
	addr, _, stop := startServe(t, map[string]string{"DATABASE_URL": db.URL, "OUTBOXKIT_DASHBOARD_USERS": "alice:" + serveToken},
		"--tls-cert", certFile, "--tls-key", keyFile)
	base := "https://" + addr
	hc := newTestClient(t, &tls.Config{RootCAs: pool})
	resp := signInOver(t, hc, base, "alice", serveToken)
	if resp.StatusCode != http.StatusSeeOther {
		t.Fatalf("sign in over TLS: %d", resp.StatusCode)
	}
	var secure bool
	for _, c := range resp.Cookies() {
		if c.Name == "__Host-outboxkit_session" {
			secure = c.Secure && c.HttpOnly
		}
	}
	if !secure {
		t.Errorf("cookies over TLS: %v", resp.Cookies())
	}
	if resp.Header.Get("Strict-Transport-Security") == "" {
		t.Error("no HSTS over TLS")
	}
	if err := stop(); err != nil {
		t.Fatal(err)
	}
}

// selfSigned writes a certificate for 127.0.0.1 and its key, and returns a
// pool that trusts it.
func selfSigned(t *testing.T) (string, string, *x509.CertPool) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "outboxkit test"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		IPAddresses: []net.IP{net.ParseIP("127.0.0.1")}, KeyUsage: x509.KeyUsageDigitalSignature,
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	kder, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	certFile, keyFile := filepath.Join(dir, "cert.pem"), filepath.Join(dir, "key.pem")
	os.WriteFile(certFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o600)
	os.WriteFile(keyFile, pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: kder}), 0o600)
	cert, _ := x509.ParseCertificate(der)
	pool := x509.NewCertPool()
	pool.AddCert(cert)
	return certFile, keyFile, pool
}
