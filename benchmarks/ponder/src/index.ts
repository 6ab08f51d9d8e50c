import { ponder } from "ponder:registry";
import { payment, tokenTotal, transfer } from "ponder:schema";

ponder.on("SpenderModule:Spend", async ({ event, context }) => {
  await context.db.insert(payment).values({
    id: event.id,
    asset: event.args.asset,
    account: event.args.account,
    receiver: event.args.receiver,
    amount: event.args.amount,
    txHash: event.transaction.hash,
    blockNumber: event.block.number,
    logIndex: event.log.logIndex,
  });
});

ponder.on("CardToken:Transfer", async ({ event, context }) => {
  await context.db.insert(transfer).values({
    id: event.id,
    token: event.log.address,
    from: event.args.from,
    to: event.args.to,
    amount: event.args.value,
    txHash: event.transaction.hash,
    blockNumber: event.block.number,
    logIndex: event.log.logIndex,
  });
  await context.db
    .insert(tokenTotal)
    .values({ token: event.log.address, count: 1, amount: event.args.value })
    .onConflictDoUpdate((row) => ({
      count: row.count + 1,
      amount: row.amount + event.args.value,
    }));
});
