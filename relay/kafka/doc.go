// Package kafka is the relay's Kafka publisher: a relay.Publisher on
// segmentio/kafka-go that writes each event as a CloudEvents record (binary
// content mode, see internal/wire) and returns only after the brokers
// acknowledged it.
//
//	pub, err := kafka.New(kafka.Config{
//	    Brokers: []string{"kafka-1:9092", "kafka-2:9092"},
//	    Source:  "/payments-api", // ce_source of events that carry none
//	})
//	if err != nil {
//	    return err // wraps relay.ErrInvalidConfig and names the field
//	}
//	defer pub.Close()
//	// Hand pub to the relay as its relay.Publisher (alone, or in a
//	// relay.TopicRouter next to a RabbitMQ publisher).
//
// # What goes on the wire
//
// Record topic = the event's topic, key = the event's key (none for keyless
// events), value = the payload untouched, headers = ce_specversion, ce_id,
// ce_source, ce_type, ce_time, content-type, ce_partitionkey, ce_sequence,
// ce_correlationid, ce_causationid, ce_traceparent, ce_tracestate,
// ce_eventversion (those that are set), then the event's own headers.
//
// # Delivery
//
// A keyed event goes to the partition the Java client would choose (murmur2
// of the key), so every event of a key lands in one partition. Publish sends
// one produce request per partition of the batch (or a few, one after the
// other, above Config.MaxBatchBytes), with the batch's events in input
// order, and waits for all in-sync replicas (Config.RequiredAcks). When an
// event fails, the later events of its key in the batch fail too, so they
// never overtake it (KeyAtomic). Publish uses kafka-go's Client, not its Writer, whose
// batching delays every synchronous write and whose defaults do not wait
// for acknowledgements.
//
// Topics are not created by the publisher. A topic missing from kafka-go's
// metadata cache is looked up on the cluster before its events are called
// unroutable; as with the Java producer, a broker with
// auto.create.topics.enable creates it then.
//
// # Errors
//
// Every failed Result carries a class of the relay's taxonomy
// (relay.ClassOf): a topic that does not exist is unroutable; a message that
// is too large or invalid is poison_format, and only it fails (its batch is
// resent one message at a time to find it); a missing ACL is a
// dependency_outage (a configuration fault: wait for the grant, park nothing);
// leader elections, missing replicas and timeouts are transient; an
// unreachable broker is a dependency_outage. When no broker can be reached
// at all, Publish returns no results and an error of class
// dependency_outage, so that the relay backs off without counting attempts.
package kafka
