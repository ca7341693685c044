// Publish a Tidings notification from Node 20 (no packages): the built-in fetch.
//
//   TIDINGS_URL=https://tidings.example.org TIDINGS_KEY=tid_… \
//     node publish.mjs alice build_finished '{"build": "42", "result": "passed"}' [idempotency-key]
//
// Prints the answer ({"notifications": [{"to": "alice", "id": 17}]}) and exits 0 on 201;
// prints the error and exits 1 otherwise. A retry with the same idempotency key stores nothing
// twice and gets the first answer again.
const [to, kind, data = "null", idempotencyKey] = process.argv.slice(2);
if (!to || !kind) {
  console.error("usage: node publish.mjs USERNAME[,USERNAME…] KIND [JSON-DATA] [IDEMPOTENCY-KEY]");
  process.exit(2);
}
const headers = {
  Authorization: `Bearer ${process.env.TIDINGS_KEY}`,
  "Content-Type": "application/json",
};
if (idempotencyKey) headers["Idempotency-Key"] = idempotencyKey;
const recipients = to.split(",");
const response = await fetch(`${process.env.TIDINGS_URL}/api/v1/notifications`, {
  method: "POST",
  headers,
  body: JSON.stringify({ to: recipients.length > 1 ? recipients : to, kind, data: JSON.parse(data) }),
});
const answer = await response.json();
console.log(JSON.stringify(answer));
process.exit(response.status === 201 ? 0 : 1);
