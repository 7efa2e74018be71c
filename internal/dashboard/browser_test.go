package dashboard_test

import (
	"bytes"
	"context"
	"flag"
	"fmt"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/chromedp/cdproto/page"
	"github.com/chromedp/chromedp"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/outboxkit/outboxkit/internal/dashboard"
	"github.com/outboxkit/outboxkit/internal/ops"
	"github.com/outboxkit/outboxkit/internal/testenv"
	"github.com/outboxkit/outboxkit/outbox"
	"github.com/outboxkit/outboxkit/relay"
	"github.com/outboxkit/outboxkit/relay/kafka"
)

// screenshotPath is the README's picture of the dashboard.
const screenshotPath = "../../docs/img/dashboard.png"

var updateScreenshot = flag.Bool("update-screenshot", false,
	"write "+screenshotPath+" from the browser test (it is written anyway when missing)")

// chromium returns Debian's headless Chromium, or skips the test when it is
// not installed, unless OUTBOXKIT_REQUIRE_BROWSER is set (as .ci/run does).
func chromium(t *testing.T) string {
	t.Helper()
	path := os.Getenv("OUTBOXKIT_CHROMIUM")
	if path == "" {
		path = "/usr/bin/chromium"
	}
	if _, err := os.Stat(path); err != nil {
		if os.Getenv("OUTBOXKIT_REQUIRE_BROWSER") != "" {
			t.Fatalf("no Chromium at %s and OUTBOXKIT_REQUIRE_BROWSER is set: apt-get install -y chromium", path)
		}
		t.Skipf("browser test skipped: no Chromium at %s (apt-get install -y chromium; .ci/run installs it). "+
			"Set OUTBOXKIT_REQUIRE_BROWSER=1 to fail instead of skipping.", path)
	}
	return path
}

// An on-call engineer in a real browser: signs in, finds the event the
// relay parked because its Kafka topic did not exist, replays it with a
// reason once the topic is there, sees it published and the audit entry
// with their name. The overview is saved as the README's screenshot.
func TestBrowserReplayParkedEvent(t *testing.T) {
	exe := chromium(t)
	if os.Getenv("KAFKA_BROKERS") != "" {
		t.Skip("a real Kafka may auto-create the missing topic")
	}
	db := testenv.NewDB(t)
	k := testenv.NewKafka(t) // kfake: no topic auto-creation
	store, err := ops.New(db.Pool, "outbox", "inbox")
	if err != nil {
		t.Fatal(err)
	}
	bg := context.Background()
	payments := "payments" // kfake is this test's own broker
	k.CreateTopic(t, payments, 2)
	payouts := "payouts" // created only after the park

	enqueue := func(topic, key string, n int, payload func(i int) string) {
		t.Helper()
		tx, err := db.Pool.Begin(bg)
		if err != nil {
			t.Fatal(err)
		}
		defer tx.Rollback(bg) //nolint:errcheck
		for i := 0; i < n; i++ {
			if _, err := outbox.Enqueue(bg, tx, outbox.Message{Topic: topic, Key: key, Type: "payout.created", Version: 2,
				Payload: []byte(payload(i)), Headers: map[string]string{"tenant": "bank-1"}, CorrelationID: "flow-42"}); err != nil {
				t.Fatal(err)
			}
		}
		if err := tx.Commit(bg); err != nil {
			t.Fatal(err)
		}
	}
	enqueue(payouts, "payout-42", 3, func(i int) string {
		return fmt.Sprintf(`{"payout":"payout-42","step":%d,"amount":"125.00","currency":"EUR","note":"<script>alert(1)</script>"}`, i+1)
	})

	// The sampler runs from the start, so the overview has a history.
	sampler, err := dashboard.NewSampler(store, dashboard.SamplerConfig{Every: 250 * time.Millisecond, Keep: 400,
		Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatal(err)
	}
	runCtx, stopAll := context.WithCancel(bg)
	sampled := make(chan struct{})
	go func() { defer close(sampled); sampler.Run(runCtx) }() //nolint:errcheck

	// A real relay publishing to the kfake broker.
	pub, err := kafka.New(kafka.Config{Brokers: k.Brokers})
	if err != nil {
		t.Fatal(err)
	}
	relayPool, err := pgxpool.New(bg, db.URL)
	if err != nil {
		t.Fatal(err)
	}
	r, err := relay.New(relayPool, &relay.Config{Publisher: pub, PollInterval: 100 * time.Millisecond, LeaseTTL: 2 * time.Second,
		Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatal(err)
	}
	relayed := make(chan error, 1)
	go func() { relayed <- r.Run(runCtx) }()
	t.Cleanup(func() {
		stopAll()
		<-sampled
		if err := <-relayed; err != nil {
			t.Errorf("relay: %v", err)
		}
		relayPool.Close()
		pub.Close()
	})

	testenv.Eventually(t, 30*time.Second, "the relay parks the event for the missing topic", func() bool {
		var parked, blocked int
		db.Pool.QueryRow(bg, `SELECT count(*) FILTER (WHERE status = 'parked'), count(*) FILTER (WHERE status = 'blocked')
		    FROM outbox.messages WHERE topic = $1`, payouts).Scan(&parked, &blocked)
		return parked == 1 && blocked == 2
	})
	// Traffic on the healthy topic, in bursts, for the charts.
	for burst := 0; burst < 6; burst++ {
		enqueue(payments, fmt.Sprintf("acct-%d", burst), 25, func(i int) string { return fmt.Sprintf(`{"n":%d}`, i) })
		time.Sleep(300 * time.Millisecond)
	}
	k.CreateTopic(t, payouts, 1) // the fix the operator waited for

	srv := httptest.NewServer(mustHandler(t, store, sampler))
	t.Cleanup(srv.Close)

	b := newBrowser(t, exe)
	ctx, run, text := b.ctx, b.run, b.text

	// Sign in: any page sends the browser to the sign-in form first.
	run("open the dashboard", chromedp.Navigate(srv.URL+"/"))
	b.signIn("alice", aliceToken, "#card-parked")

	// The overview as the on-call engineer finds it: one event parked, its
	// key held, the charts of the last seconds. It is the README's picture.
	if err := sampler.SampleNow(bg); err != nil {
		t.Fatal(err)
	}
	run("reload the overview", chromedp.Reload(), chromedp.WaitVisible(chromedp.CSS(".chart-svg")))
	if p := text("#card-parked .value"); p != "1" {
		t.Errorf("overview: %s parked, want 1", p)
	}
	png, err := chromedp.Run(ctx, chromedp.FullScreenshot(100))
	if err != nil {
		t.Fatalf("browser: screenshot: %v", err)
	}
	if !bytes.HasPrefix(png, []byte("\x89PNG\r\n\x1a\n")) {
		t.Fatalf("screenshot is not a PNG (%d bytes)", len(png))
	}
	if len(png) > 300<<10 {
		t.Errorf("screenshot is %d KB, keep it under 300 KB", len(png)>>10)
	}
	out := filepath.Join(t.TempDir(), "dashboard.png")
	if _, err := os.Stat(screenshotPath); *updateScreenshot || os.IsNotExist(err) {
		out = screenshotPath
	}
	if err := os.WriteFile(out, png, 0o644); err != nil {
		t.Fatal(err)
	}
	t.Logf("overview screenshot: %s (%d KB)", out, len(png)>>10)

	// Parked events: the one for the missing topic, with its reason.
	run("open parked events", chromedp.Click(chromedp.CSS(`header nav a[href="/events?kind=outbox"]`)),
		chromedp.WaitVisible(chromedp.CSS("#events")))
	list := text("#events")
	for _, want := range []string{"payout-42", "unroutable", "does not exist", payouts} {
		if !strings.Contains(list, want) {
			t.Errorf("parked events list lacks %q:\n%s", want, list)
		}
	}
	run("open the event", chromedp.Click(chromedp.CSS("#events a.ref")), chromedp.WaitVisible(chromedp.CSS("#replay-reason")))
	if s := text("#status"); s != "parked" {
		t.Fatalf("status %q, want parked", s)
	}
	if p := text("#payload"); !strings.Contains(p, `"note": "<script>alert(1)</script>"`) {
		t.Errorf("payload shown as %q, want the pretty JSON with the script as text", p)
	}

	// Replay with a reason.
	run("replay",
		chromedp.SendKeys(chromedp.CSS("#replay-reason"), "INC-7 topic created"),
		chromedp.Click(chromedp.CSS("#replay")),
		chromedp.WaitVisible(chromedp.CSS(".flash-ok")))
	if f := text(".flash-ok"); !strings.Contains(f, "replayed") {
		t.Errorf("flash %q", f)
	}
	deadline := time.Now().Add(60 * time.Second)
	for {
		s := text("#status")
		if s == "published" {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the replayed event is still %s after 60s", s)
		}
		time.Sleep(300 * time.Millisecond)
		run("reload", chromedp.Reload(), chromedp.WaitVisible(chromedp.CSS("#status")))
	}
	if ack := text("#published-at"); ack == "" {
		t.Error("no publish time on the page")
	}

	// The audit log names alice and her reason.
	run("open the audit log", chromedp.Click(chromedp.CSS(`header nav a[href="/audit"]`)), chromedp.WaitVisible(chromedp.CSS("#audit")))
	row := text("#audit tbody tr")
	for _, want := range []string{"alice", "replay", "INC-7 topic created"} {
		if !strings.Contains(row, want) {
			t.Errorf("audit row %q lacks %q", row, want)
		}
	}
	var actor, reason string
	db.Pool.QueryRow(bg, `SELECT actor, reason FROM outbox.audit_log WHERE action = 'replay'`).Scan(&actor, &reason)
	if actor != "alice" || reason != "INC-7 topic created" {
		t.Errorf("audit_log: %q %q", actor, reason)
	}
	// The key's waiting events followed their head, in order.
	testenv.Eventually(t, 30*time.Second, "the whole key published", func() bool {
		var n int
		db.Pool.QueryRow(bg, `SELECT count(*) FROM outbox.messages WHERE topic = $1 AND status = 'published'`, payouts).Scan(&n)
		return n == 3
	})
	for i, rec := range k.Records(t, payouts, 3, 10*time.Second) {
		if !bytes.Contains(rec.Value, []byte(fmt.Sprintf(`"step":%d`, i+1))) {
			t.Errorf("record %d on %s: %s", i, payouts, rec.Value)
		}
	}

	// The overview shows that all is well again.
	run("open the overview", chromedp.Navigate(srv.URL+"/"), chromedp.WaitVisible(chromedp.CSS(".chart-svg")))
	if p := text("#card-parked .value"); p != "0" {
		t.Errorf("overview: %s parked after the replay", p)
	}

	run("sign out", chromedp.Click(chromedp.CSS(".signout button")), chromedp.WaitVisible(chromedp.CSS("#name")))
}

// The two-person rule in a real browser: alice asks for a drop, which only
// records an approval; she cannot approve it herself on the Approvals page;
// bob signs in and approves it there, the event is dropped, and the audit
// log page shows both of them.
func TestBrowserTwoPersonApproval(t *testing.T) {
	exe := chromium(t)
	db := testenv.NewDB(t)
	store, err := ops.New(db.Pool, "outbox", "inbox")
	if err != nil {
		t.Fatal(err)
	}
	ids := seedParked(t, db.Pool, "payouts", "payout-77", []byte(`{"payout":"payout-77","amount":"10.00"}`))
	if _, err := db.Pool.Exec(context.Background(), `UPDATE outbox.settings SET two_person_rule = true, updated_by = 'dba'`); err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(mustHandler(t, store, nil))
	t.Cleanup(srv.Close)
	event := srv.URL + "/events/o:" + itoa(ids[0])

	b := newBrowser(t, exe)
	b.acceptDialogs() // the drop button asks "Drop o:N?"
	b.run("open the parked event", chromedp.Navigate(event))
	b.signIn("alice", aliceToken, "#drop-reason")
	b.run("drop",
		chromedp.SendKeys(chromedp.CSS("#drop-reason"), "duplicate of payout-76"),
		chromedp.Click(chromedp.CSS("#drop")),
		chromedp.WaitVisible(chromedp.CSS(".flash-ok")))
	if f := b.text(".flash-ok"); !strings.Contains(f, "The two-person rule is on: nothing ran. Approval #1 (drop o:"+itoa(ids[0])) {
		t.Errorf("flash after the drop: %q", f)
	}
	if s := b.text("#status"); s != "parked" {
		t.Errorf("status %q after a drop waiting for approval, want parked", s)
	}

	// approve opens the Approvals page, approves #1 with reason and returns
	// the message shown in flash (.flash-ok or .flash-error).
	approve := func(reason, flash string) string {
		t.Helper()
		b.run("open the approvals", chromedp.Click(chromedp.CSS(`header nav a[href="/approvals"]`)),
			chromedp.WaitVisible(chromedp.CSS("#approve-1")))
		if row := b.text("#approvals tbody tr"); !strings.Contains(row, "drop") || !strings.Contains(row, "alice") ||
			!strings.Contains(row, "duplicate of payout-76") {
			t.Errorf("approvals row %q", row)
		}
		b.run("approve",
			chromedp.SendKeys(chromedp.CSS("#approve-reason-1"), reason),
			chromedp.Click(chromedp.CSS("#approve-1")),
			chromedp.WaitVisible(chromedp.CSS(flash)))
		return b.text(flash)
	}
	// Her own approval is refused.
	if f := approve("looks right", ".flash-error"); !strings.Contains(f, "you asked for this") {
		t.Errorf("flash after approving her own: %q", f)
	}
	b.run("sign out", chromedp.Click(chromedp.CSS(".signout button")), chromedp.WaitVisible(chromedp.CSS("#name")))

	// Bob approves it and it runs.
	b.signIn("bob", bobToken, "#card-parked")
	if f := approve("checked the ledger", ".flash-ok"); !strings.Contains(f, "Approval #1 approved and run: 1 dropped;") {
		t.Errorf("flash after bob's approval: %q", f)
	}
	b.run("open the event", chromedp.Navigate(event), chromedp.WaitVisible(chromedp.CSS("#status")))
	if s := b.text("#status"); s != "dropped" {
		t.Errorf("status %q after the approval, want dropped", s)
	}

	// The audit log: bob's approval, then alice's drop naming it.
	b.run("open the audit log", chromedp.Click(chromedp.CSS(`header nav a[href="/audit"]`)), chromedp.WaitVisible(chromedp.CSS("#audit")))
	rows, err := chromedp.Run(b.ctx, chromedp.Evaluate[[]string](`Array.from(document.querySelectorAll("#audit tbody tr")).map(
		r => r.querySelector(".actor").textContent.trim() + ":" + r.querySelector(".badge").textContent.trim() + ":" +
		     r.querySelector(".reason").textContent.trim())`))
	if err != nil {
		t.Fatalf("browser: read the audit log: %v", err)
	}
	want := []string{"alice:drop:duplicate of payout-76", "bob:approve:checked the ledger", "alice:request_approval:duplicate of payout-76"}
	if strings.Join(rows, "|") != strings.Join(want, "|") {
		t.Errorf("audit log page, newest first: %q, want %q", rows, want)
	}
}

// browser is a headless Chromium for one test; its helpers fail the test.
type browser struct {
	t      *testing.T
	ctx    context.Context
	cancel context.CancelFunc // ends ctx: the tab and what listens to it
}

func newBrowser(t *testing.T, exe string) *browser {
	t.Helper()
	opts := append(chromedp.DefaultExecAllocatorOptions[:],
		chromedp.ExecPath(exe),
		chromedp.NoSandbox, // tests run as root
		chromedp.Headless,
		chromedp.DisableGPU,
		chromedp.Flag("disable-dev-shm-usage", true),
		chromedp.Flag("hide-scrollbars", true),
		chromedp.UserDataDir(t.TempDir()),
		chromedp.WindowSize(1360, 900),
	)
	allocCtx, cancelAlloc := chromedp.NewExecAllocator(context.Background(), opts...)
	bctx, cancelBrowser := chromedp.NewContext(allocCtx)
	ctx, cancel := context.WithTimeout(bctx, 3*time.Minute)
	t.Cleanup(func() {
		cancel()
		cancelBrowser()
		cancelAlloc()
	})
	return &browser{t: t, ctx: ctx, cancel: cancel}
}

func (b *browser) run(what string, steps ...chromedp.Action[chromedp.Void]) {
	b.t.Helper()
	if err := chromedp.Do(b.ctx, steps...); err != nil {
		b.t.Fatalf("browser: %s: %v", what, err)
	}
}

func (b *browser) text(sel string) string {
	b.t.Helper()
	s, err := chromedp.Run(b.ctx, chromedp.Text(chromedp.CSS(sel)))
	if err != nil {
		b.t.Fatalf("browser: read %s: %v", sel, err)
	}
	return strings.TrimSpace(s)
}

// signIn fills the sign-in form the browser shows and waits for sel on the
// page it is sent to.
func (b *browser) signIn(name, token, sel string) {
	b.t.Helper()
	b.run("sign in as "+name,
		chromedp.WaitVisible(chromedp.CSS("#name")),
		chromedp.SendKeys(chromedp.CSS("#name"), name),
		chromedp.SendKeys(chromedp.CSS("#token"), token),
		chromedp.Click(chromedp.CSS("#signin")),
		chromedp.WaitVisible(chromedp.CSS(sel)))
}

// acceptDialogs answers OK to every confirm dialog (data-confirm forms)
// until the test ends.
func (b *browser) acceptDialogs() {
	b.run("open a tab") // Events listens on the tab, which must exist
	dialogs := chromedp.Events(b.ctx, page.JavascriptDialogOpening)
	done := make(chan struct{})
	go func() {
		defer close(done)
		for _, err := range dialogs {
			if err != nil {
				return
			}
			if _, err := chromedp.Call(b.ctx, page.HandleJavaScriptDialog, page.HandleJavaScriptDialogParams{Accept: true}); err != nil {
				return
			}
		}
	}()
	b.t.Cleanup(func() {
		b.cancel() // this cleanup runs before newBrowser's
		<-done
	})
}

func mustHandler(t *testing.T, store *ops.Store, sampler *dashboard.Sampler) http.Handler {
	t.Helper()
	logs := &syncBuffer{}
	h, err := dashboard.New(store, dashboard.Config{Users: testUsers(t), Sampler: sampler,
		Logger: slog.New(slog.NewTextHandler(logs, nil))})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if strings.Contains(logs.String(), aliceToken) {
			t.Errorf("the token is in the logs:\n%s", logs.String())
		}
	})
	return h
}
