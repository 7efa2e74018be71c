package ingest

import (
	"bytes"
	"encoding/json"
	"testing"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"
	kafkago "github.com/segmentio/kafka-go"
)

// storable fails unless l can be inserted: JSON that jsonb accepts (valid,
// without \u0000) and text columns that PostgreSQL text accepts.
func storable(t *testing.T, l *Letter) {
	t.Helper()
	for name, j := range map[string][]byte{"headers": l.Headers, "source": l.Origin} {
		if !json.Valid(j) || bytes.Contains(j, []byte(`\u0000`)) {
			t.Fatalf("%s is not storable jsonb: %q", name, j)
		}
	}
	for name, s := range map[string]string{"topic": l.Topic, "key": l.Key, "error": l.Error, "class": l.Class} {
		if !isText([]byte(s)) {
			t.Fatalf("%s is not storable text: %q", name, s)
		}
	}
	if l.Error == "" || l.Topic == "" && l.From == FromRabbitMQ || l.Attempts < 1 || l.IngestKey == "" {
		t.Fatalf("incomplete letter: %+v", l)
	}
}

// Any RabbitMQ delivery, whatever its headers, converts into a storable
// row whose typed headers come back as the same table.
func FuzzRabbitLetter(f *testing.F) {
	f.Add("x-death", "rejected", []byte("q"), []byte{0xff}, int64(3), "id")
	f.Add("\xff", "\x00", []byte{}, []byte("{}"), int64(-1), "")
	f.Fuzz(func(t *testing.T, name, reason string, queue, body []byte, count int64, msgID string) {
		h := amqp.Table{
			name:      string(body),
			"x-death": []any{amqp.Table{"reason": reason, "queue": string(queue), "count": count, "routing-keys": []any{reason}, "exchange": name}},
			"n":       amqp.Table{name: []any{body, count, float32(count)}},
		}
		d := &amqp.Delivery{Headers: h, Body: body, MessageId: msgID, RoutingKey: string(queue), Exchange: name}
		l := rabbitLetter("s", "dlq", d, time.Unix(0, 0))
		storable(t, l)
		var hs []struct {
			Name any    `json:"name"`
			AMQP *typed `json:"amqp"`
		}
		if err := json.Unmarshal(l.Headers, &hs); err != nil {
			t.Fatal(err)
		}
		back := amqp.Table{}
		for _, x := range hs {
			n, err := decodeName(x.Name)
			if err != nil {
				t.Fatal(err)
			}
			v, err := decodeValue(*x.AMQP)
			if err != nil {
				t.Fatal(err)
			}
			back[n] = v
		}
		want, _ := json.Marshal(encodeTable(h, 0))
		got, _ := json.Marshal(encodeTable(back, 0))
		if !bytes.Equal(want, got) {
			t.Fatalf("headers do not round-trip:\n%s\n%s", want, got)
		}
	})
}

// Any Kafka record converts into a storable row.
func FuzzKafkaLetter(f *testing.F) {
	f.Add("kafka_dlt-original-partition", []byte{0, 0, 0, 2}, []byte("k"), []byte("v"))
	f.Add("outboxkit-dlt-error-class", []byte("\xff"), []byte(nil), []byte{0})
	f.Fuzz(func(t *testing.T, name string, value, key, body []byte) {
		m := &kafkago.Message{Topic: "dlt", Partition: 1, Offset: 9, Key: key, Value: body, Headers: []kafkago.Header{
			{Key: name, Value: value}, {Key: "ce_id", Value: value}, {Key: "kafka_dlt-original-topic", Value: value},
			{Key: "outboxkit-dlt-first-failed-at", Value: value}, {Key: "ce_sequence", Value: value}}}
		storable(t, kafkaLetter("s", m, time.Unix(0, 0)))
	})
}
