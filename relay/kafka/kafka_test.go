package kafka_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"slices"
	"sort"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/google/uuid"
	kafkago "github.com/segmentio/kafka-go"
	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kgo"
	"go.uber.org/goleak"

	"github.com/outboxkit/outboxkit/internal/testenv"
	"github.com/outboxkit/outboxkit/relay"
	"github.com/outboxkit/outboxkit/relay/kafka"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// topicName is unique per test and run, so tests can share a real cluster.
func topicName(t *testing.T, suffix string) string {
	name := strings.NewReplacer("/", "-", " ", "-").Replace(t.Name())
	return fmt.Sprintf("outboxkit-%s-%s-%s", name, suffix, uuid.NewString()[:8])
}

func newPublisher(t *testing.T, cfg kafka.Config) *kafka.Publisher {
	t.Helper()
	p, err := kafka.New(cfg)
	if err != nil {
		t.Fatalf("kafka.New: %v", err)
	}
	t.Cleanup(func() { p.Close() })
	return p
}

func publish(t *testing.T, p *kafka.Publisher, msgs []relay.Message) []relay.Result {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	res, err := p.Publish(ctx, msgs)
	if err != nil {
		t.Fatalf("Publish: batch error: %v", err)
	}
	if len(res) != len(msgs) {
		t.Fatalf("Publish: %d results for %d messages", len(res), len(msgs))
	}
	return res
}

func message(topic, key string, seq int64, payload []byte) relay.Message {
	return relay.Message{
		EventID:     uuid.New(),
		Topic:       topic,
		Key:         key,
		Sequence:    seq,
		Type:        "payment.settled",
		Version:     1,
		ContentType: "application/json",
		Payload:     payload,
		CreatedAt:   time.Now(),
	}
}

// wantHeaders spells out the wire contract (DESIGN.md, "Wire format")
// independently of internal/wire.
func wantHeaders(m relay.Message, defaultSource string) []kgo.RecordHeader {
	var h []kgo.RecordHeader
	add := func(k, v string) {
		if v != "" {
			h = append(h, kgo.RecordHeader{Key: k, Value: []byte(v)})
		}
	}
	src := m.Source
	if src == "" {
		src = defaultSource
	}
	add("ce_specversion", "1.0")
	add("ce_id", m.EventID.String())
	add("ce_source", src)
	add("ce_type", m.Type)
	add("ce_time", m.CreatedAt.UTC().Format(time.RFC3339Nano))
	add("content-type", m.ContentType)
	if m.Key != "" {
		add("ce_partitionkey", m.Key)
		add("ce_sequence", strconv.FormatInt(m.Sequence, 10))
	}
	add("ce_correlationid", m.CorrelationID)
	add("ce_causationid", m.CausationID)
	add("ce_traceparent", m.TraceParent)
	add("ce_tracestate", m.TraceState)
	if m.Version > 0 {
		add("ce_eventversion", strconv.Itoa(m.Version))
	}
	names := make([]string, 0, len(m.Headers))
	for k := range m.Headers {
		names = append(names, k)
	}
	sort.Strings(names)
	for _, k := range names {
		add(k, m.Headers[k])
	}
	return h
}

func header(r *kgo.Record, name string) string {
	for _, h := range r.Headers {
		if h.Key == name {
			return string(h.Value)
		}
	}
	return ""
}

func TestPublishWireFormatOrderAndAcks(t *testing.T) {
	t.Parallel()
	k := testenv.NewKafka(t)
	topics := []string{topicName(t, "a"), topicName(t, "b")}
	createTopic(t, k, topics[0], 4, nil)
	createTopic(t, k, topics[1], 3, nil)
	const source = "/test/relay"
	p := newPublisher(t, kafka.Config{Brokers: k.Brokers, Source: source})

	created := time.Date(2026, 11, 23, 12, 1, 6, 123456789, time.FixedZone("CET", 3600))
	type lane struct{ topic, key string }
	seq := map[lane]int64{}
	var msgs []relay.Message
	for i := range 500 {
		m := message(topics[(i/7)%2], "", 0, fmt.Appendf(nil, `{"n":%d}`, i))
		m.ID = int64(i + 1)
		m.Version = 1 + i%3
		m.CreatedAt = created.Add(time.Duration(i) * time.Microsecond)
		if i%10 != 9 { // 450 keyed events over 50 keys, 50 keyless
			m.Key = fmt.Sprintf("acct-%02d", (i-i/10)%50)
			seq[lane{m.Topic, m.Key}]++
			m.Sequence = seq[lane{m.Topic, m.Key}]
		}
		switch i % 5 {
		case 0:
			m.Headers = map[string]string{"tenant": "t-1", "a-first": "x"}
			m.CorrelationID = "corr-" + strconv.Itoa(i)
		case 1:
			m.TraceParent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
			m.TraceState = "vendor=1"
			m.CausationID = uuid.NewString()
		case 2:
			m.Source = "/payments-api"
			m.ContentType = ""
		}
		msgs = append(msgs, m)
	}
	msgs[0].Payload = []byte{0, 0xff, 0xfe, 'x', 0, 0xc3} // NUL and invalid UTF-8
	msgs[1].Payload = []byte{}
	msgs[2].Payload = bytes.Repeat([]byte{0x80, 0}, 4096)

	res := publish(t, p, msgs)
	for i, r := range res {
		if r.Err != nil {
			t.Fatalf("message %d: %v", i, r.Err)
		}
	}

	byID := map[string]int{}
	count := map[string]int{}
	for i, m := range msgs {
		byID[m.EventID.String()] = i
		count[m.Topic]++
	}
	partitionOf := map[lane]int32{}
	lastSeq := map[lane]int64{}
	for _, tp := range topics {
		recs := k.Records(t, tp, count[tp], 30*time.Second)
		if len(recs) != count[tp] {
			t.Fatalf("topic %s: read %d records, want %d", tp, len(recs), count[tp])
		}
		// Records come partition by partition, each in offset order.
		sort.SliceStable(recs, func(a, b int) bool {
			return recs[a].Partition < recs[b].Partition || recs[a].Partition == recs[b].Partition && recs[a].Offset < recs[b].Offset
		})
		for _, r := range recs {
			i, ok := byID[header(r, "ce_id")]
			if !ok {
				t.Fatalf("record %s/%d@%d has unknown ce_id %q", r.Topic, r.Partition, r.Offset, header(r, "ce_id"))
			}
			m := msgs[i]
			if want := wantHeaders(m, source); !slices.EqualFunc(r.Headers, want, func(a, b kgo.RecordHeader) bool {
				return a.Key == b.Key && bytes.Equal(a.Value, b.Value)
			}) {
				t.Errorf("message %d headers:\n got %q\nwant %q", i, r.Headers, want)
			}
			if !bytes.Equal(r.Value, m.Payload) {
				t.Errorf("message %d value = %q, want %q", i, r.Value, m.Payload)
			}
			if want := fmt.Sprintf("kafka %s/%d@%d", r.Topic, r.Partition, r.Offset); res[i].Ack != want {
				t.Errorf("message %d Ack = %q, want %q", i, res[i].Ack, want)
			}
			if m.Key == "" {
				if r.Key != nil {
					t.Errorf("keyless message %d has record key %q", i, r.Key)
				}
				continue
			}
			if string(r.Key) != m.Key {
				t.Errorf("message %d key = %q, want %q", i, r.Key, m.Key)
			}
			l := lane{m.Topic, m.Key}
			if p, ok := partitionOf[l]; ok && p != r.Partition {
				t.Errorf("key %s of %s in partitions %d and %d", m.Key, m.Topic, p, r.Partition)
			}
			partitionOf[l] = r.Partition
			// The Java client's partitioner (franz-go mirrors it) agrees.
			if want := kgo.StickyKeyPartitioner(nil).ForTopic(r.Topic).Partition(r, map[string]int{topics[0]: 4, topics[1]: 3}[r.Topic]); int(r.Partition) != want {
				t.Errorf("key %s of %s in partition %d, Java's murmur2 says %d", m.Key, m.Topic, r.Partition, want)
			}
			if m.Sequence != lastSeq[l]+1 {
				t.Errorf("key %s of %s: ce_sequence %d follows %d", m.Key, m.Topic, m.Sequence, lastSeq[l])
			}
			lastSeq[l] = m.Sequence
		}
	}
	for l, n := range seq {
		if lastSeq[l] != n {
			t.Errorf("key %s of %s: read up to sequence %d, want %d", l.key, l.topic, lastSeq[l], n)
		}
	}
}

func TestPublishUnknownTopicIsUnroutable(t *testing.T) {
	t.Parallel()
	k := testenv.NewKafka(t) // kfake creates no topic unless kfake.AllowAutoTopicCreation is given
	if k.Fake == nil && autoCreatesTopics(t, k) {
		t.Skip("the cluster has auto.create.topics.enable=true: no topic is unknown to it")
	}
	known, missing := topicName(t, "known"), topicName(t, "missing")
	createTopic(t, k, known, 2, nil)
	p := newPublisher(t, kafka.Config{Brokers: k.Brokers})

	res := publish(t, p, []relay.Message{message(missing, "k", 1, []byte("a")), message(known, "k", 1, []byte("b")), message("", "", 0, nil)})
	if res[0].Err == nil || relay.ClassOf(res[0].Err) != relay.ClassUnroutable {
		t.Fatalf("unknown topic: Err = %v (class %q), want unroutable", res[0].Err, relay.ClassOf(res[0].Err))
	}
	if msg := res[0].Err.Error(); !strings.Contains(msg, strconv.Quote(missing)) || !strings.Contains(msg, "create it") {
		t.Errorf("unknown topic: message %q should name the topic and say what to do", msg)
	}
	if !errors.Is(res[0].Err, kafkago.UnknownTopicOrPartition) {
		t.Errorf("unknown topic: %v does not wrap kafka-go's UnknownTopicOrPartition", res[0].Err)
	}
	if res[1].Err != nil || res[1].Ack == "" {
		t.Errorf("known topic: Err = %v, Ack = %q", res[1].Err, res[1].Ack)
	}
	if relay.ClassOf(res[2].Err) != relay.ClassUnroutable {
		t.Errorf("empty topic: Err = %v, want unroutable", res[2].Err)
	}

	// Created now, the topic is found although kafka-go's metadata cache
	// does not know it yet: unroutable is only said after asking the
	// cluster. (A real cluster may still be spreading the new topic to its
	// brokers: that is transient.)
	createTopic(t, k, missing, 2, nil)
	for deadline := time.Now().Add(30 * time.Second); ; {
		res = publish(t, p, []relay.Message{message(missing, "k", 1, []byte("a"))})
		if res[0].Err == nil {
			break
		}
		if relay.ClassOf(res[0].Err) != relay.ClassTransient || k.Fake != nil || time.Now().After(deadline) {
			t.Fatalf("topic created after the first publish: %v (class %q)", res[0].Err, relay.ClassOf(res[0].Err))
		}
		time.Sleep(100 * time.Millisecond)
	}
}

func autoCreatesTopics(t *testing.T, k *testenv.Kafka) bool {
	cl, err := kgo.NewClient(kgo.SeedBrokers(k.Brokers...))
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	rcs, err := kadm.NewClient(cl).DescribeBrokerConfigs(ctx)
	if err != nil {
		t.Fatalf("describe broker configs: %v", err)
	}
	for _, rc := range rcs {
		for _, c := range rc.Configs {
			if c.Key == "auto.create.topics.enable" {
				return c.MaybeValue() == "true"
			}
		}
	}
	return true
}

func TestPublishTooLargeIsPoisonAndIsolated(t *testing.T) {
	t.Parallel()
	k := testenv.NewKafka(t)
	tp := topicName(t, "small")
	createTopic(t, k, tp, 1, map[string]*string{"max.message.bytes": kadm.StringPtr("4096")})
	p := newPublisher(t, kafka.Config{Brokers: k.Brokers})

	// One partition: all four share one produce request, which Kafka
	// refuses as a whole because of a2.
	msgs := []relay.Message{
		message(tp, "a", 1, []byte("a1")),
		message(tp, "a", 2, bytes.Repeat([]byte("x"), 8192)),
		message(tp, "a", 3, []byte("a3")),
		message(tp, "b", 1, []byte("b1")),
	}
	res := publish(t, p, msgs)
	if res[0].Err != nil || res[3].Err != nil {
		t.Fatalf("the good messages failed with the bad one: %v, %v", res[0].Err, res[3].Err)
	}
	if c := relay.ClassOf(res[1].Err); c != relay.ClassPoisonFormat || !strings.Contains(res[1].Err.Error(), "max.message.bytes") {
		t.Fatalf("too large: Err = %v (class %q), want poison_format naming max.message.bytes", res[1].Err, c)
	}
	if c := relay.ClassOf(res[2].Err); c != relay.ClassTransient {
		t.Fatalf("the message after the bad one of its key: Err = %v (class %q), want transient (held back)", res[2].Err, c)
	}
	recs := k.Records(t, tp, 2, 30*time.Second)
	if len(recs) != 2 || string(recs[0].Value) != "a1" || string(recs[1].Value) != "b1" {
		t.Fatalf("topic holds %d records, want a1 then b1", len(recs))
	}
	// A single too-large message is refused the same way.
	res = publish(t, p, msgs[1:2])
	if c := relay.ClassOf(res[0].Err); c != relay.ClassPoisonFormat {
		t.Fatalf("single too-large message: class %q, want poison_format", c)
	}
}

func TestPublishSplitsBatchesAboveMaxBatchBytes(t *testing.T) {
	t.Parallel()
	k := testenv.NewKafka(t)
	tp := topicName(t, "small")
	createTopic(t, k, tp, 1, map[string]*string{"max.message.bytes": kadm.StringPtr("4096")})
	var msgs []relay.Message
	for i := range 12 { // 12 KB for one partition: three times what the topic takes in one batch
		msgs = append(msgs, message(tp, "k", int64(i+1), bytes.Repeat([]byte{byte('a' + i)}, 1000)))
	}

	for _, tc := range []struct {
		maxBatchBytes int
		isolates      bool // Kafka refuses the first batch, so messages go one by one
	}{{3000, false}, {0, true}} {
		var logs bytes.Buffer
		p := newPublisher(t, kafka.Config{Brokers: k.Brokers, MaxBatchBytes: tc.maxBatchBytes,
			Logger: slog.New(slog.NewTextHandler(&logs, nil))})
		for i, r := range publish(t, p, msgs) {
			if r.Err != nil {
				t.Fatalf("MaxBatchBytes %d: message %d: %v", tc.maxBatchBytes, i, r.Err)
			}
		}
		if got := strings.Contains(logs.String(), "one at a time"); got != tc.isolates {
			t.Errorf("MaxBatchBytes %d: isolated messages = %v, want %v; logs:\n%s", tc.maxBatchBytes, got, tc.isolates, logs.String())
		}
	}
	recs := k.Records(t, tp, 2*len(msgs), 30*time.Second)
	if len(recs) != 2*len(msgs) {
		t.Fatalf("read %d records, want %d", len(recs), 2*len(msgs))
	}
	for j, r := range recs { // input order, twice
		if want := msgs[j%len(msgs)].Payload; r.Offset != int64(j) || !bytes.Equal(r.Value, want) {
			t.Fatalf("record at offset %d holds %.3q..., want offset %d with %.3q...", r.Offset, r.Value, j, want)
		}
	}
}

// createTopic creates topic through the admin API, as testenv.CreateTopic
// does, and also waits until every partition has a leader: at once on kfake,
// a moment later on a real cluster.
func createTopic(t *testing.T, k *testenv.Kafka, topic string, partitions int32, configs map[string]*string) {
	t.Helper()
	cl, err := kgo.NewClient(kgo.SeedBrokers(k.Brokers...))
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	adm := kadm.NewClient(cl)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	resp, err := adm.CreateTopic(ctx, partitions, 1, configs, topic)
	if err == nil {
		err = resp.Err
	}
	if err != nil {
		t.Fatalf("create topic %s: %v", topic, err)
	}
	for {
		tds, err := adm.ListTopics(ctx, topic)
		td := tds[topic]
		ready := err == nil && td.Err == nil && len(td.Partitions) == int(partitions)
		for _, pd := range td.Partitions {
			ready = ready && pd.Err == nil && pd.Leader >= 0
		}
		if ready {
			return
		}
		select {
		case <-ctx.Done():
			t.Fatalf("topic %s has no leaders yet: %v", topic, err)
		case <-time.After(50 * time.Millisecond):
		}
	}
}

func TestPublishBrokerUnreachable(t *testing.T) {
	t.Parallel()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	l.Close() // nothing listens there now

	const timeout = 3 * time.Second
	p := newPublisher(t, kafka.Config{Brokers: []string{addr}, Timeout: timeout})
	for range 2 { // the second call meets kafka-go's cached failure
		start := time.Now()
		res, err := p.Publish(context.Background(), []relay.Message{message("payments", "k", 1, []byte("a"))})
		if err == nil || res != nil {
			t.Fatalf("Publish = %v, %v; want no results and a batch error", res, err)
		}
		if c := relay.ClassOf(err); c != relay.ClassDependencyOutage {
			t.Fatalf("batch error %v has class %q, want dependency_outage", err, c)
		}
		if d := time.Since(start); d > timeout {
			t.Fatalf("Publish took %v, more than the %v timeout", d, timeout)
		}
	}
}

func TestPublishBrokerGoneAfterStart(t *testing.T) {
	t.Parallel()
	k := testenv.NewKafka(t)
	if k.Fake == nil {
		t.Skip("stops the broker: needs the in-process kfake")
	}
	tp := topicName(t, "t")
	createTopic(t, k, tp, 2, nil)
	p := newPublisher(t, kafka.Config{Brokers: k.Brokers, Timeout: 5 * time.Second})
	publish(t, p, []relay.Message{message(tp, "k", 1, []byte("a"))})

	k.Fake.Close()
	res, err := p.Publish(context.Background(), []relay.Message{message(tp, "k", 2, []byte("b")), message(tp, "j", 1, []byte("c"))})
	if err == nil || res != nil || relay.ClassOf(err) != relay.ClassDependencyOutage {
		t.Fatalf("Publish = %v, %v (class %q); want no results and a dependency_outage batch error", res, err, relay.ClassOf(err))
	}
}

func TestPublishEmptyAndClosed(t *testing.T) {
	t.Parallel()
	p, err := kafka.New(kafka.Config{Brokers: []string{"127.0.0.1:1"}})
	if err != nil {
		t.Fatal(err)
	}
	res, err := p.Publish(context.Background(), nil)
	if err != nil || len(res) != 0 {
		t.Fatalf("empty batch: %v, %v", res, err)
	}
	p.Close()
	p.Close()
	if _, err := p.Publish(context.Background(), []relay.Message{message("t", "", 0, nil)}); !errors.Is(err, kafka.ErrClosed) {
		t.Fatalf("after Close: %v, want ErrClosed", err)
	}
}

func TestNewValidatesConfig(t *testing.T) {
	t.Parallel()
	ok := []string{"127.0.0.1:9092"}
	for _, tc := range []struct {
		name string
		cfg  kafka.Config
		want string // in the message
	}{
		{"no brokers", kafka.Config{}, "Config.Brokers is empty"},
		{"broker without port", kafka.Config{Brokers: []string{"kafka-1"}}, `"kafka-1" is not host:port`},
		{"empty broker", kafka.Config{Brokers: []string{""}}, "is not host:port"},
		{"bad acks", kafka.Config{Brokers: ok, RequiredAcks: 2}, "RequiredAcks"},
		{"negative timeout", kafka.Config{Brokers: ok, Timeout: -time.Second}, "Config.Timeout"},
		{"negative in-flight", kafka.Config{Brokers: ok, MaxInFlight: -1}, "Config.MaxInFlight"},
		{"negative batch bytes", kafka.Config{Brokers: ok, MaxBatchBytes: -1}, "Config.MaxBatchBytes"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p, err := kafka.New(tc.cfg)
			if err == nil {
				p.Close()
				t.Fatal("New accepted the config")
			}
			if !errors.Is(err, relay.ErrInvalidConfig) || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("New: %v; want relay.ErrInvalidConfig mentioning %q", err, tc.want)
			}
		})
	}
	for _, cfg := range []kafka.Config{
		{Brokers: ok},
		{Brokers: []string{"[::1]:9092", "kafka-2:9093"}, RequiredAcks: kafkago.RequireOne, Transport: &kafkago.Transport{}},
	} {
		p, err := kafka.New(cfg)
		if err != nil {
			t.Fatalf("New(%+v): %v", cfg, err)
		}
		p.Close()
	}
}
