// Start workerd through Miniflare on 127.0.0.1:$PORT with worker.js.
import { Miniflare } from "miniflare";
import { fileURLToPath } from "node:url";

const mf = new Miniflare({
  modules: true,
  scriptPath: fileURLToPath(new URL("./worker.js", import.meta.url)),
  compatibilityDate: "2025-01-01",
  durableObjects: { ROOMS: "Room" },
  host: "127.0.0.1",
  port: Number(process.env.PORT || 8787),
});
await mf.ready;
console.log(`miniflare listening on 127.0.0.1:${process.env.PORT || 8787}`);
const stop = async () => { await mf.dispose(); process.exit(0); };
process.on("SIGINT", stop);
process.on("SIGTERM", stop);
