package ingest

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/twmb/franz-go/pkg/kgo"
	"github.com/twmb/franz-go/pkg/kmsg"

	"github.com/outboxkit/outboxkit/internal/ops"
	"github.com/outboxkit/outboxkit/internal/testenv"
)

func be32(n int32) []byte { b := make([]byte, 4); binary.BigEndian.PutUint32(b, uint32(n)); return b }
func be64(n int64) []byte { b := make([]byte, 8); binary.BigEndian.PutUint64(b, uint64(n)); return b }

// A dead-letter topic written by Spring Kafka (binary partition and offset
// headers), by Kafka Connect (text headers), by outboxkit's convention, and
// by nobody in particular (no headers, a key and payload that are not
// text): each record is one row; a second run commits nothing new; a
// second group re-reads every record and inserts nothing; replay writes the
// original record, without the dead-letter headers, to the original topic.
func TestKafkaIngestReplay(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	db := testenv.NewDB(t)
	store, err := NewStore(db.Pool, "outbox", "inbox")
	if err != nil {
		t.Fatal(err)
	}
	k := testenv.NewKafka(t)
	orig, dlt := testenv.UniqueName("payments"), testenv.UniqueName("payments-dlt")
	k.CreateTopic(t, orig, 3)
	k.CreateTopic(t, dlt, 2)
	retry := testenv.UniqueName("payments-retry") // the corrected copies of edits
	k.CreateTopic(t, retry, 1)
	cl, err := kgo.NewClient(kgo.SeedBrokers(k.Brokers...), kgo.RecordPartitioner(kgo.ManualPartitioner()))
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	springID := uuid.NewString()
	h := func(k string, v []byte) kgo.RecordHeader { return kgo.RecordHeader{Key: k, Value: v} }
	records := []*kgo.Record{
		{Topic: dlt, Partition: 0, Key: []byte("payout-9"), Value: []byte(`{"amount":5}`), Headers: []kgo.RecordHeader{
			h("ce_id", []byte(springID)), h("ce_type", []byte("payout.created")), h("ce_partitionkey", []byte("payout-9")),
			h("ce_sequence", []byte("3")), h("tenant", []byte{0xff, 0x01}),
			h("kafka_dlt-original-topic", []byte(orig)), h("kafka_dlt-original-partition", be32(2)),
			h("kafka_dlt-original-offset", be64(41)), h("kafka_dlt-original-consumer-group", []byte("ledger")),
			h("kafka_dlt-exception-fqcn", []byte("org.springframework.kafka.listener.ListenerExecutionFailedException")),
			h("kafka_dlt-exception-cause-fqcn", []byte("org.springframework.kafka.support.serializer.DeserializationException")),
			h("kafka_dlt-exception-message", []byte("failed to deserialize")), h("kafka_dlt-exception-stacktrace", []byte("at ...")),
		}},
		{Topic: dlt, Partition: 1, Value: []byte("connect"), Headers: []kgo.RecordHeader{
			h("__connect.errors.topic", []byte(orig)), h("__connect.errors.partition", []byte("1")),
			h("__connect.errors.offset", []byte("7")), h("__connect.errors.connector.name", []byte("jdbc-sink")),
			h("__connect.errors.stage", []byte("TASK_PUT")),
			h("__connect.errors.exception.class.name", []byte("org.apache.kafka.connect.errors.ConnectException")),
			h("__connect.errors.exception.message", []byte("duplicate key")),
		}},
		{Topic: dlt, Partition: 1, Value: []byte("mine"), Headers: []kgo.RecordHeader{
			h("outboxkit-dlt-original-topic", []byte(orig)), h("outboxkit-dlt-error", []byte("ledger closed")),
			h("outboxkit-dlt-error-class", []byte("no_handler")), h("outboxkit-dlt-attempts", []byte("5")),
			h("outboxkit-dlt-first-failed-at", []byte("2026-01-02T03:04:05Z")),
		}},
		{Topic: dlt, Partition: 0, Key: []byte{0x00, 0xff}, Value: []byte{0xc3, 0x28, 0x00}, Headers: []kgo.RecordHeader{h("\xff", []byte{0})}},
	}
	if err := cl.ProduceSync(ctx, records...).FirstErr(); err != nil {
		t.Fatal(err)
	}
	cfg := KafkaConfig{KafkaConn: KafkaConn{Brokers: k.Brokers}, Topic: dlt, Once: true, IdleTimeout: 5 * time.Second}
	res, err := store.IngestKafka(ctx, cfg)
	if err != nil || res.Ingested != 4 {
		t.Fatalf("ingest: %+v %v", res, err)
	}
	b := &bundle{db: db, store: store}
	spring := b.row(t, "event_id = $1", uuid.MustParse(springID))
	if spring.Consumer != "kafka:"+dlt || spring.From != "kafka" || spring.Topic != orig || spring.Key != "payout-9" ||
		*spring.Sequence != 3 || spring.Class != "poison_format" || !strings.Contains(spring.Error, "failed to deserialize") ||
		spring.Source["original_partition"] != float64(2) || spring.Source["original_offset"] != float64(41) ||
		spring.Source["failed_consumer"] != "ledger" {
		t.Errorf("spring row: %+v", spring)
	}
	connect := b.row(t, "payload = $1", []byte("connect"))
	if connect.Topic != orig || connect.Class != "permanent" || !strings.Contains(connect.Error, "ConnectException: duplicate key (stage TASK_PUT)") ||
		connect.Source["original_offset"] != float64(7) {
		t.Errorf("connect row: %+v", connect)
	}
	mine := b.row(t, "payload = $1", []byte("mine"))
	if mine.Class != "no_handler" || mine.Error != "ledger closed" || mine.Attempts != 5 {
		t.Errorf("outboxkit-convention row: %+v", mine)
	}
	bare := b.row(t, "payload = $1", []byte{0xc3, 0x28, 0x00})
	if bare.Topic != dlt || bare.Key != "" || !strings.Contains(bare.Error, "without error headers") {
		t.Errorf("bare row: %+v", bare)
	}

	if res, err := store.IngestKafka(ctx, cfg); err != nil || res != (Result{}) {
		t.Fatalf("second run: %+v %v", res, err)
	}
	// Another group reads everything again (as after a crash between the
	// row's commit and the offset commit): nothing new.
	cfg.Group = "another-" + dlt
	if res, err := store.IngestKafka(ctx, cfg); err != nil || res.Ingested != 0 || res.Duplicates != 4 || b.rows(t) != 4 {
		t.Fatalf("re-read by another group: %+v %v, %d rows", res, err, b.rows(t))
	}

	operator := b.operator(t, &Republisher{Kafka: &KafkaConn{Brokers: k.Brokers}})
	a := ops.Action{Actor: "oncall-ann", Reason: "schema fixed"}
	ref := func(id int64) ops.Ref { return ops.Ref{Kind: ops.KindInbox, ID: id} }
	if _, err := operator.Replay(ctx, a, ref(spring.ID)); err != nil {
		t.Fatal(err)
	}
	got := k.Records(t, orig, 1, 10*time.Second)
	if len(got) != 1 {
		t.Fatalf("%d records in the original topic", len(got))
	}
	r := got[0]
	if r.Partition != 2 || string(r.Key) != "payout-9" || !bytes.Equal(r.Value, records[0].Value) {
		t.Errorf("replayed record: partition %d key %q value %q", r.Partition, r.Key, r.Value)
	}
	var names []string
	for _, x := range r.Headers {
		names = append(names, x.Key)
		if x.Key == "tenant" && !bytes.Equal(x.Value, []byte{0xff, 0x01}) {
			t.Errorf("tenant header %x", x.Value)
		}
	}
	if strings.Join(names, ",") != "ce_id,ce_type,ce_partitionkey,ce_sequence,tenant" {
		t.Errorf("replayed headers: %v", names)
	}
	if r := b.row(t, "id = $1", spring.ID); r.Status != "replayed" {
		t.Errorf("status %s", r.Status)
	}
	var n int
	db.Pool.QueryRow(ctx, `SELECT count(*) FROM outbox.audit_log WHERE action = 'replay' AND actor = 'oncall-ann' AND $1 = ANY(target_ids)`,
		springID).Scan(&n)
	if n != 1 {
		t.Errorf("%d replay audit entries", n)
	}
	if _, err := operator.Replay(ctx, a, ref(bare.ID)); !errors.Is(err, ErrNoTarget) {
		t.Errorf("replay of a record without an original topic: %v", err)
	}

	// An edit sends a corrected copy of a CloudEvent as a new event (new
	// ce_id, the original as its cause and in outboxkit-edit-of) to the
	// retry topic, never to the original topic, whose other consumer
	// groups applied the original; without a retry topic it is refused
	// and nothing is sent. The row keeps the original payload.
	editedID := uuid.NewString()
	if err := cl.ProduceSync(ctx, &kgo.Record{Topic: dlt, Partition: 1, Key: []byte("payout-10"), Value: []byte(`{"amount":"x"}`),
		Headers: []kgo.RecordHeader{h("ce_id", []byte(editedID)), h("ce_type", []byte("payout.created")),
			h("outboxkit-dlt-original-topic", []byte(orig)), h("outboxkit-dlt-original-partition", []byte("0")),
			h("outboxkit-dlt-error", []byte("amount is not a number"))}}).FirstErr(); err != nil {
		t.Fatal(err)
	}
	cfg.Group = ""
	if res, err := store.IngestKafka(ctx, cfg); err != nil || res.Ingested != 1 {
		t.Fatalf("ingest of the record to edit: %+v %v", res, err)
	}
	row := b.row(t, "event_id = $1", uuid.MustParse(editedID))
	if _, err := operator.BrokerTarget(ctx, ref(row.ID), true); !errors.Is(err, ErrKafkaEditNeedsTopic) {
		t.Errorf("where an edit would go without a retry topic: %v", err)
	}
	if _, err := operator.Edit(ctx, a, ref(row.ID), []byte(`{"amount":5}`), ""); !errors.Is(err, ErrKafkaEditNeedsTopic) {
		t.Fatalf("edit without a retry topic: %v", err)
	}
	if r := b.row(t, "id = $1", row.ID); r.Status != "parked" {
		t.Fatalf("a refused edit changed the row to %s", r.Status)
	}
	operator = b.operator(t, &Republisher{Kafka: &KafkaConn{Brokers: k.Brokers}, KafkaRetryTopic: retry})
	if d, err := operator.BrokerTarget(ctx, ref(row.ID), true); err != nil || d.Topic != retry {
		t.Errorf("where an edit would go: %+v %v", d, err)
	}
	out, err := operator.Edit(ctx, a, ref(row.ID), []byte(`{"amount":5}`), "")
	if err != nil || out.Result != "edited" || out.NewEventID == "" || out.NewEventID == editedID {
		t.Fatalf("edit: %+v %v", out, err)
	}
	got = k.Records(t, retry, 1, 10*time.Second)
	if len(got) != 1 {
		t.Fatalf("%d records in the retry topic after the edit", len(got))
	}
	r = got[0]
	headers := map[string]string{}
	names = nil
	for _, x := range r.Headers {
		names = append(names, x.Key)
		headers[x.Key] = string(x.Value)
	}
	if string(r.Key) != "payout-10" || string(r.Value) != `{"amount":5}` || headers["ce_id"] != out.NewEventID ||
		headers["ce_causationid"] != editedID || headers["outboxkit-edit-of"] != editedID ||
		strings.Join(names, ",") != "ce_type,ce_id,ce_causationid,outboxkit-edit-of" {
		t.Errorf("the corrected copy: key %q value %q headers %v", r.Key, r.Value, r.Headers)
	}
	if after := b.row(t, "id = $1", row.ID); after.Status != "edited" || string(after.Payload) != `{"amount":"x"}` {
		t.Errorf("the edited row: %s %q", after.Status, after.Payload)
	}
}

// storedKafkaLetter is a Kafka dead letter from topic, as dlq ingest stores it.
func storedKafkaLetter(topic string) *ops.BrokerLetter {
	return &ops.BrokerLetter{Ref: ops.Ref{Kind: ops.KindInbox, ID: 1}, From: FromKafka, EventID: uuid.NewString(),
		Payload: []byte(`{"amount":5}`), Headers: []byte(`[]`), Source: []byte(`{"original_topic":"` + topic + `"}`)}
}

// fakeKafkaTopic starts a kfake cluster with one topic, for tests that
// inject broker faults; they skip themselves on a real Kafka.
func fakeKafkaTopic(t *testing.T) (*testenv.Kafka, string) {
	t.Helper()
	k := testenv.NewKafka(t)
	if k.Fake == nil {
		t.Skip("injects broker faults through kfake")
	}
	topic := testenv.UniqueName("payments")
	k.CreateTopic(t, topic, 1)
	return k, topic
}

// A broker's refusal (an error code for the record) is "not written", not
// "outcome unknown": kafka-go reports it inside WriteErrors, which errors.As
// cannot see into. A timeout waiting for the replicas is unknown: the
// leader may have appended the record.
func TestKafkaRefusalIsNotAnUnknownOutcome(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name    string
		code    int16
		unknown bool
	}{
		{"topic authorization failed", 29, false},
		{"request timed out (the replicas did not confirm in time)", 7, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			k, topic := fakeKafkaTopic(t)
			k.Fake.ControlKey(int16(kmsg.Produce), func(req kmsg.Request) (kmsg.Response, error, bool) {
				k.Fake.KeepControl()
				return produceAnswer(req, tc.code), nil, true
			})
			rep := &Republisher{Kafka: &KafkaConn{Brokers: k.Brokers}, Timeout: 5 * time.Second}
			_, err := rep.Republish(context.Background(), storedKafkaLetter(topic))
			if err == nil || errors.Is(err, ops.ErrOutcomeUnknown) != tc.unknown {
				t.Errorf("error %v, want outcome unknown: %v", err, tc.unknown)
			}
		})
	}
}

// kafka-go's produce does not follow the caller's context, and Close waits
// for a batch still being written: a send to a broker that never answers
// ends with its budget (outcome unknown), not after the writer's own
// timeouts and retries.
func TestKafkaSendEndsWithItsBudget(t *testing.T) {
	t.Parallel()
	k, topic := fakeKafkaTopic(t)
	release := make(chan struct{})
	t.Cleanup(func() { close(release) }) // before kfake's Close, which also wakes it
	k.Fake.ControlKey(int16(kmsg.Produce), func(kmsg.Request) (kmsg.Response, error, bool) {
		k.Fake.KeepControl()
		k.Fake.SleepControl(func() { <-release })
		return nil, nil, false
	})
	const budget = 2 * time.Second
	rep := &Republisher{Kafka: &KafkaConn{Brokers: k.Brokers}, Timeout: budget}
	start := time.Now()
	_, err := rep.Republish(context.Background(), storedKafkaLetter(topic))
	if took := time.Since(start); !errors.Is(err, ops.ErrOutcomeUnknown) || took > budget+time.Second {
		t.Errorf("after %s: %v, want outcome unknown within %s", took.Round(time.Millisecond), err, budget)
	}
}

// Review 3: kafka-go retries temporary errors (it had MaxAttempts 3) and reports
// only the last attempt's. A first attempt that timed out waiting for the
// replicas (the leader may have appended the record) followed by refusals
// (NOT_ENOUGH_REPLICAS, temporary, so retried) must stay "outcome unknown",
// not "Kafka refused it, nothing was written".
func TestKafkaRefusalAfterATimedOutAttemptIsUnknown(t *testing.T) {
	t.Parallel()
	k, topic := fakeKafkaTopic(t)
	var attempts int
	k.Fake.ControlKey(int16(kmsg.Produce), func(req kmsg.Request) (kmsg.Response, error, bool) {
		k.Fake.KeepControl()
		attempts++
		code := int16(19) // NOT_ENOUGH_REPLICAS: refused, not appended
		if attempts == 1 {
			code = 7 // REQUEST_TIMED_OUT: may be appended
		}
		return produceAnswer(req, code), nil, true
	})
	rep := &Republisher{Kafka: &KafkaConn{Brokers: k.Brokers}, Timeout: 10 * time.Second}
	_, err := rep.Republish(context.Background(), storedKafkaLetter(topic))
	if !errors.Is(err, ops.ErrOutcomeUnknown) {
		t.Errorf("after %d attempts, the first timed out: %v, want outcome unknown", attempts, err)
	}
}

// A refusal that a later attempt may not get (NOT_ENOUGH_REPLICAS) is
// retried: refused twice then accepted is sent; refused on every
// attempt is "refused, nothing was written".
func TestKafkaRetriesOnlyRefusals(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name    string
		refusal int // attempts refused before one is let through; 3 = all
		sent    bool
	}{
		{"refused twice, then accepted", 2, true},
		{"refused on every attempt", 3, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			k, topic := fakeKafkaTopic(t)
			var attempts int
			k.Fake.ControlKey(int16(kmsg.Produce), func(req kmsg.Request) (kmsg.Response, error, bool) {
				k.Fake.KeepControl()
				if attempts++; attempts > tc.refusal {
					return nil, nil, false // kfake appends it
				}
				return produceAnswer(req, 19), nil, true // NOT_ENOUGH_REPLICAS: refused, not appended
			})
			rep := &Republisher{Kafka: &KafkaConn{Brokers: k.Brokers}, Timeout: 10 * time.Second}
			_, err := rep.Republish(context.Background(), storedKafkaLetter(topic))
			switch {
			case tc.sent && err != nil:
				t.Errorf("after %d attempts: %v, want it sent", attempts, err)
			case !tc.sent && (err == nil || errors.Is(err, ops.ErrOutcomeUnknown) || !strings.Contains(err.Error(), "nothing was written")):
				t.Errorf("after %d attempts: %v, want refused", attempts, err)
			}
			if want := min(tc.refusal+1, 3); attempts != want {
				t.Errorf("%d attempts, want %d", attempts, want)
			}
		})
	}
}

// produceAnswer answers produce request req with error code for every
// partition (kfake appends nothing).
func produceAnswer(req kmsg.Request, code int16) kmsg.Response {
	r := req.(*kmsg.ProduceRequest)
	resp := r.ResponseKind().(*kmsg.ProduceResponse)
	for _, rt := range r.Topics {
		st := kmsg.NewProduceResponseTopic()
		st.Topic = rt.Topic
		for _, rp := range rt.Partitions {
			sp := kmsg.NewProduceResponseTopicPartition()
			sp.Partition, sp.ErrorCode = rp.Partition, code
			st.Partitions = append(st.Partitions, sp)
		}
		resp.Topics = append(resp.Topics, st)
	}
	return resp
}
