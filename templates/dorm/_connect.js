// Shared by the demo pages: who am I, open the client, show state and latency.
const params = new URLSearchParams(location.search);
const AUTH = JSON.parse(document.getElementById("auth").textContent); // {mode, csrf}
const CAN_JOIN = AUTH.mode !== "login";

// A logged-in user gets room tokens from the token API with the session
// (and CSRF token); the same call refreshes an expired token (close 4401).
async function fetchTokenBody() {
  const res = await fetch(`/api/rooms/${encodeURIComponent(ROOM)}/token`, {
    method: "POST",
    headers: { "Content-Type": "application/json", "X-CSRFToken": AUTH.csrf },
    body: "{}",
    credentials: "same-origin",
  });
  return res.ok ? res.json() : null; // logged out meanwhile: the client stops
}

let userId = params.get("user") || sessionStorage.getItem("dorm-user");
if (!userId) {
  userId = `guest-${Math.random().toString(36).slice(2, 7)}`;
  sessionStorage.setItem("dorm-user", userId);
}
const identity = { userId };
if (AUTH.mode === "session") {
  const body = await fetchTokenBody();
  userId = body ? body.userId : "";
  identity.userId = undefined;
  identity.token = body ? body.token : undefined;
  identity.refreshToken = async () => (await fetchTokenBody())?.token ?? null;
}
const client = new DormClient({
  room: ROOM,
  ...identity,
  heartbeatMs: Number(params.get("heartbeat") || 5000),
  // Demo knobs (also used by the browser tests): ?backoff=ms&backoffMax=ms
  backoffBaseMs: Number(params.get("backoff") || 500),
  backoffMaxMs: Number(params.get("backoffMax") || 30000),
});
window.dormClient = client;
document.getElementById("me").textContent = CAN_JOIN ? userId : "";
if (!CAN_JOIN) {
  const login = document.getElementById("login-needed");
  login.hidden = false;
  login.querySelector("a").href = `/admin/login/?next=${encodeURIComponent(location.pathname)}`;
}
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
