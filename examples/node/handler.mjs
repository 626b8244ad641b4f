// A pushbridge callback receiver as a serverless-style handler (Web Fetch API:
// Request in, Response out), as Vercel, Netlify, Cloudflare Workers and Deno use.
// It verifies the Standard Webhooks signature with the `standardwebhooks` package,
// deduplicates on `webhook-id` (a delivery may arrive twice, never a different event),
// and answers 2xx only once the event is handled.
import { Webhook } from "standardwebhooks";

export function makeHandler(secret, onEvent) {
  // During a secret rotation pushbridge signs with every secret; verify with yours.
  const wh = new Webhook(secret);
  const seen = new Set(); // use your database in production
  return async function handler(request) {
    if (request.method !== "POST") return new Response("method not allowed", { status: 405 });
    const body = await request.text(); // verify the exact bytes received
    const headers = Object.fromEntries(request.headers);
    let event;
    try {
      event = wh.verify(body, headers); // checks signature and timestamp (±5 min)
    } catch (err) {
      return new Response("invalid signature", { status: 400 });
    }
    const id = headers["webhook-id"];
    if (!seen.has(id)) {
      seen.add(id);
      await onEvent(event); // event.type: job.completed | job.failed; event.data: the job
    }
    return new Response(null, { status: 204 });
  };
}
