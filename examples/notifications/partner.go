package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"sync"
	"sync/atomic"
	"time"
)

// smsPartner simulates the SMS gateway of a telecom partner: an HTTP server
// in this process that can be switched down (it then answers 503, as a
// partner's load balancer does during an outage). Like real gateways it
// deduplicates on the Idempotency-Key header: a request repeated with the
// same key is answered with the first message id and sends nothing.
type smsPartner struct {
	URL  string
	srv  *http.Server
	done chan struct{}
	up   atomic.Bool

	mu         sync.Mutex
	sent       map[string]string // idempotency key -> message id
	phones     map[string]int    // phone -> SMS sent
	requests   int
	refused    int // answered 503
	duplicates int // repeated idempotency keys (nothing sent)
}

type partnerCounts struct {
	Requests, Refused, Duplicates, Sent int
}

func startPartner() (*smsPartner, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, fmt.Errorf("start the simulated SMS partner: %w", err)
	}
	p := &smsPartner{URL: "http://" + ln.Addr().String(), done: make(chan struct{}),
		sent: map[string]string{}, phones: map[string]int{}}
	p.up.Store(true)
	mux := http.NewServeMux()
	mux.HandleFunc("POST /v1/sms", p.send)
	p.srv = &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second}
	go func() {
		defer close(p.done)
		p.srv.Serve(ln) //nolint:errcheck // ErrServerClosed after Close
	}()
	return p, nil
}

// Close stops the server and waits for it.
func (p *smsPartner) Close() {
	p.srv.Close() //nolint:errcheck
	<-p.done
}

// SetUp switches the partner up or down.
func (p *smsPartner) SetUp(up bool) { p.up.Store(up) }

func (p *smsPartner) Counts() partnerCounts {
	p.mu.Lock()
	defer p.mu.Unlock()
	return partnerCounts{Requests: p.requests, Refused: p.refused, Duplicates: p.duplicates, Sent: len(p.sent)}
}

func (p *smsPartner) send(w http.ResponseWriter, r *http.Request) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.requests++
	if !p.up.Load() {
		p.refused++
		w.Header().Set("Retry-After", "1")
		http.Error(w, "service unavailable", http.StatusServiceUnavailable)
		return
	}
	var req smsRequest
	if err := json.NewDecoder(r.Body).Decode(&req); err != nil || req.To == "" || req.Text == "" {
		http.Error(w, "bad request: to and text are required", http.StatusBadRequest)
		return
	}
	key := r.Header.Get("Idempotency-Key")
	if key == "" {
		http.Error(w, "bad request: Idempotency-Key is required", http.StatusBadRequest)
		return
	}
	id, seen := p.sent[key]
	if seen {
		p.duplicates++
	} else {
		id = fmt.Sprintf("sms-%04d", len(p.sent)+1)
		p.sent[key] = id
		p.phones[req.To]++
	}
	w.Header().Set("Content-Type", "application/json")
	json.NewEncoder(w).Encode(smsResponse{MessageID: id}) //nolint:errcheck
}

type smsRequest struct {
	To   string `json:"to"`
	Text string `json:"text"`
}

type smsResponse struct {
	MessageID string `json:"message_id"`
}

// errPartnerDown and errPartnerRefused are what smsClient.Send returns;
// the consumer turns them into the inbox's error classes.
var (
	errPartnerDown    = errors.New("SMS partner unavailable")
	errPartnerRefused = errors.New("SMS partner refused the message")
)

// smsClient is how the notifications service talks to the partner.
type smsClient struct {
	url  string
	http *http.Client
}

// Send asks the partner to send text to phone. key makes the request
// idempotent: the same key never sends a second SMS.
func (c *smsClient) Send(ctx context.Context, key, phone, text string) (messageID string, err error) {
	body, err := json.Marshal(smsRequest{To: phone, Text: text})
	if err != nil {
		return "", err
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, c.url+"/v1/sms", bytes.NewReader(body))
	if err != nil {
		return "", err
	}
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("Idempotency-Key", key)
	resp, err := c.http.Do(req)
	if err != nil {
		return "", fmt.Errorf("%w: %w", errPartnerDown, err) // cannot connect, timeout
	}
	defer resp.Body.Close()
	switch {
	case resp.StatusCode == http.StatusOK:
		var out smsResponse
		if err := json.NewDecoder(resp.Body).Decode(&out); err != nil {
			return "", fmt.Errorf("SMS partner answered 200 with an unreadable body: %w", err)
		}
		return out.MessageID, nil
	case resp.StatusCode == http.StatusTooManyRequests || resp.StatusCode >= 500:
		return "", fmt.Errorf("%w: %s", errPartnerDown, resp.Status)
	default:
		return "", fmt.Errorf("%w: %s", errPartnerRefused, resp.Status)
	}
}
