// Bench peer: a Node.js `http` cluster answering "ok" with WORKERS worker
// processes. usage: node node_ok.js WORKERS; prints the port (127.0.0.1).
const cluster = require("node:cluster");
const http = require("node:http");
const net = require("node:net");

const workers = Number(process.argv[2] || 2);

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
      res.writeHead(200, { "Content-Length": "2" });
      res.end("ok");
    })
    .listen(Number(process.env.PORT), "127.0.0.1");
}
