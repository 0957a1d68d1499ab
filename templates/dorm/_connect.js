// Shared by the demo pages: who am I, open the client, show state and latency.
const params = new URLSearchParams(location.search);
let userId = params.get("user") || sessionStorage.getItem("dorm-user");
if (!userId) {
  userId = `guest-${Math.random().toString(36).slice(2, 7)}`;
  sessionStorage.setItem("dorm-user", userId);
}
const client = new DormClient({
  room: ROOM,
  userId,
  heartbeatMs: Number(params.get("heartbeat") || 5000),
  // Demo knobs (also used by the browser tests): ?backoff=ms&backoffMax=ms
  backoffBaseMs: Number(params.get("backoff") || 500),
  backoffMaxMs: Number(params.get("backoffMax") || 30000),
});
window.dormClient = client;
document.getElementById("me").textContent = userId;
const statusEl = document.getElementById("status");
const latencyEl = document.getElementById("latency");
client.on("state", ({ state, code, delayMs }) => {
  statusEl.dataset.state = state;
  statusEl.textContent = state === "reconnecting" && delayMs !== undefined ? `reconnecting in ${(delayMs / 1000).toFixed(1)} s` : state;
  if (state === "closed" && code) statusEl.textContent = `closed (${code})`;
  if (state !== "open") latencyEl.textContent = "- ms";
});
client.on("latency", ({ ms }) => {
  latencyEl.textContent = `${ms} ms`;
  latencyEl.dataset.ms = String(ms);
});
