// Bench peer: what most integrators would write in Node.js. An `http`
// cluster with WORKERS worker processes that verifies Svix-signed webhook
// deliveries with `crypto` (HMAC-SHA256 over "<id>.<t>.<body>", base64 key
// after "whsec_", timingSafeEqual against every "v1,<base64>" entry,
// |now - t| <= 300 s) and parses the body with JSON.parse.
// 200 {"ok":true}; 400 without headers or with bad JSON; 401 bad signature.
//   usage: BENCH_SECRET=whsec_... node node_webhook.js WORKERS
// Prints the port (127.0.0.1, ephemeral) once every worker listens.
const cluster = require("node:cluster");
const crypto = require("node:crypto");
const http = require("node:http");
const net = require("node:net");

const workers = Number(process.argv[2] || 2);
const secret = process.env.BENCH_SECRET || "";
if (!secret.startsWith("whsec_")) {
  console.error("node_webhook: BENCH_SECRET=whsec_<base64> is required");
  process.exit(1);
}
const key = Buffer.from(secret.slice(6), "base64");

function reply(res, status, body) {
  res.writeHead(status, { "Content-Type": "application/json", "Content-Length": Buffer.byteLength(body) });
  res.end(body);
}

function verify(headers, body) {
  const id = headers["svix-id"];
  const ts = headers["svix-timestamp"];
  const sig = headers["svix-signature"];
  if (!id || !ts || !sig) return 400;
  if (!/^\d{1,12}$/.test(ts)) return 400;
  if (Math.abs(Date.now() / 1000 - Number(ts)) > 300) return 401;
  const expected = crypto.createHmac("sha256", key).update(`${id}.${ts}.`).update(body).digest();
  for (const entry of sig.split(" ")) {
    const [version, value] = entry.split(",");
    if (version !== "v1" || !value) continue;
    const got = Buffer.from(value, "base64");
    if (got.length === expected.length && crypto.timingSafeEqual(got, expected)) return 200;
  }
  return 401;
}

if (cluster.isPrimary) {
  const probe = net.createServer();
  probe.listen(0, "127.0.0.1", () => {
    const port = probe.address().port;
    probe.close(() => {
      let ready = 0;
      for (let i = 0; i < workers; i++) {
        cluster.fork({ PORT: String(port) }).on("listening", () => {
          if (++ready === workers) console.log(port);
        });
      }
    });
  });
  const stop = () => {
    for (const id in cluster.workers) cluster.workers[id].kill();
    process.exit(0);
  };
  process.on("SIGTERM", stop);
  process.on("SIGINT", stop);
} else {
  http
    .createServer((req, res) => {
      if (req.method !== "POST") return reply(res, 405, '{"error":"method_not_allowed"}');
      const chunks = [];
      req.on("data", (c) => chunks.push(c));
      req.on("end", () => {
        const body = Buffer.concat(chunks);
        const status = verify(req.headers, body);
        if (status !== 200) return reply(res, status, '{"error":"rejected"}');
        let event;
        try {
          event = JSON.parse(body.toString("utf8"));
        } catch {
          return reply(res, 400, '{"error":"invalid_json"}');
        }
        if (typeof (event.eventType || event.type) !== "string") return reply(res, 400, '{"error":"invalid_json"}');
        reply(res, 200, '{"ok":true}');
      });
    })
    .listen(Number(process.env.PORT), "127.0.0.1");
}
