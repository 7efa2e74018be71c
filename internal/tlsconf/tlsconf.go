// Package tlsconf builds TLS client configurations and reads secrets for the
// broker connections, from flags, environment variables and files. Secrets
// are never part of an error message.
package tlsconf

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"os"
	"strings"
)

// Files names the PEM files of a TLS client configuration. All optional:
// no CA means the system roots; a certificate needs its key.
type Files struct {
	CA   string // CA bundle that signed the server's certificate
	Cert string // client certificate (mutual TLS)
	Key  string // client private key
	// ServerName overrides the name checked in the server's certificate.
	ServerName string
}

// Empty reports whether no file or name is set.
func (f Files) Empty() bool { return f == Files{} }

// Config returns the TLS client configuration (TLS 1.2 or newer).
func (f Files) Config() (*tls.Config, error) {
	cfg := &tls.Config{MinVersion: tls.VersionTLS12, ServerName: f.ServerName}
	if f.CA != "" {
		pem, err := os.ReadFile(f.CA)
		if err != nil {
			return nil, fmt.Errorf("TLS CA file: %w", err)
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("TLS CA file %s holds no PEM certificate", f.CA)
		}
		cfg.RootCAs = pool
	}
	if (f.Cert == "") != (f.Key == "") {
		return nil, errors.New("TLS client certificate and key go together: set both files or neither")
	}
	if f.Cert != "" {
		pair, err := tls.LoadX509KeyPair(f.Cert, f.Key)
		if err != nil {
			// The error of LoadX509KeyPair never contains key material.
			return nil, fmt.Errorf("TLS client certificate %s / key %s: %w", f.Cert, f.Key, err)
		}
		cfg.Certificates = []tls.Certificate{pair}
	}
	return cfg, nil
}

// Secret returns a secret from (in order) the environment variable env or
// the file named by the environment variable env+"_FILE" or by file. A
// trailing newline of a file is dropped. An empty result is not an error.
func Secret(getenv func(string) string, env, file string) (string, error) {
	if v := getenv(env); v != "" {
		return v, nil
	}
	if f := getenv(env + "_FILE"); f != "" && file == "" {
		file = f
	}
	if file == "" {
		return "", nil
	}
	b, err := os.ReadFile(file)
	if err != nil {
		return "", fmt.Errorf("read secret file: %w", err)
	}
	return strings.TrimRight(string(b), "\r\n"), nil
}
