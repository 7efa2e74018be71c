package rabbitmq

// Internals for the tests of package rabbitmq_test.
var (
	ReplyClass = replyClass
	RedactURL  = redactURL
	Scrub      = scrub
)

const MaxInFlight = maxInFlight
