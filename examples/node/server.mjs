// Serves the handler on a local port (for trying it out, and for the test suite).
// WEBHOOK_SECRET=whsec_... PORT=9000 node server.mjs
// Each verified event is printed as one JSON line on stdout.
import { createServer } from "node:http";
import { makeHandler } from "./handler.mjs";

const handler = makeHandler(process.env.WEBHOOK_SECRET, async (event) => {
  process.stdout.write(JSON.stringify(event) + "\n");
});

const server = createServer(async (req, res) => {
  const chunks = [];
  for await (const chunk of req) chunks.push(chunk);
  const request = new Request(`http://${req.headers.host}${req.url}`, {
    method: req.method,
    headers: req.headers,
    body: req.method === "POST" ? Buffer.concat(chunks) : undefined,
  });
  const response = await handler(request);
  res.writeHead(response.status, Object.fromEntries(response.headers));
  res.end(Buffer.from(await response.arrayBuffer()));
});
server.listen(Number(process.env.PORT || 9000), "127.0.0.1", () => {
  process.stderr.write(`listening on ${server.address().port}\n`);
});
