// HTTP API of the benchmark: only what benchmarks/ponder_bench.py polls to see when every row
// is visible. (Ponder itself serves /health, /ready, /status and /metrics.)
import { db } from "ponder:api";
import schema from "ponder:schema";
import { Hono } from "hono";
import { count } from "ponder";

const app = new Hono();

app.get("/bench/counts", async (c) => {
  const [payments] = await db.select({ n: count() }).from(schema.payment);
  const [transfers] = await db.select({ n: count() }).from(schema.transfer);
  const totals = await db.select().from(schema.tokenTotal);
  return c.json({
    payments: payments?.n ?? 0,
    transfers: transfers?.n ?? 0,
    totals: Object.fromEntries(
      totals.map((t) => [t.token.toLowerCase(), { count: t.count, amount: t.amount.toString() }]),
    ),
  });
});

export default app;
