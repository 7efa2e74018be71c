package testenv

import (
	"net"
	"net/url"
	"testing"

	toxiproxy "github.com/Shopify/toxiproxy/v2"
	"github.com/rs/zerolog"
)

// Proxy starts an in-process TCP proxy (toxiproxy) on loopback in front of
// upstream (host:port) and stops it when the test ends. Stop() cuts every
// connection through it and refuses new ones until Start(); toxics add
// latency, bandwidth limits or timeouts.
func Proxy(t testing.TB, name, upstream string) *toxiproxy.Proxy {
	t.Helper()
	srv := toxiproxy.NewServer(toxiproxy.NewMetricsContainer(nil), zerolog.Nop())
	px := toxiproxy.NewProxy(srv, name, "127.0.0.1:0", upstream)
	if err := px.Start(); err != nil {
		t.Fatalf("testenv: start proxy %s: %v", name, err)
	}
	t.Cleanup(px.Stop)
	return px
}

// RabbitProxy is Proxy in front of the test RabbitMQ; it returns the proxy
// and the AMQP URL that goes through it.
func RabbitProxy(t testing.TB) (*toxiproxy.Proxy, string) {
	t.Helper()
	u, err := url.Parse(RabbitURL())
	if err != nil {
		t.Fatal(err)
	}
	upstream := u.Host
	if u.Port() == "" {
		upstream = net.JoinHostPort(u.Hostname(), "5672")
	}
	px := Proxy(t, "rabbitmq", upstream)
	u.Host = px.Listen
	return px, u.String()
}

// ProxyLeakIgnores are the goleak options for toxiproxy's own goroutines,
// which outlive Stop briefly when a peer went away.
var ProxyLeakIgnores = []string{
	"github.com/Shopify/toxiproxy/v2.(*ToxicLink).read",
	"github.com/Shopify/toxiproxy/v2.(*ToxicLink).write",
	"github.com/Shopify/toxiproxy/v2/toxics.(*ToxicStub).Run",
	"github.com/Shopify/toxiproxy/v2.(*ToxicLink).RemoveToxic.func1",
}
