// Package sink is meterd's way out: it tails the durable outbox of the
// balance engine and ships what it settled to ClickHouse (ledger entries and
// usage records, exactly once), to Kafka (ledger entries and notifications,
// at least once) and to a webhook (notifications, signed, at least once).
//
// The engine writes one outbox record per commit group in the same Pebble
// batch as the change itself, so nothing durable is missing from the outbox
// and nothing is in it that did not happen. A sink reads outbox records in
// sequence order up to the engine's durability watermark, cuts them into
// batches deterministically (the same range always gives the same rows), and
// advances its durable cursor only after the destination acknowledged the
// batch. Outbox records are deleted once every configured sink shipped them.
//
// Destinations: ClickHouse (ledger_entries, usage_events and the analyst
// views; exactly once), Kafka topics of ledger entries and notifications
// (at least once, with a stable id per message), and a webhook endpoint
// (notifications in order, signed with HMAC-SHA256, at least once).
package sink
