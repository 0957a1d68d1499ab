// One unmodified Yjs client: a Y.Doc with y-websocket's WebsocketProvider
// (on the `ws` package, as in Node). Driven by tests/clients/test_yjs_interop.py
// over stdin/stdout, one JSON object per line.
//
//   node peer.mjs <serverUrl> <room> <userId>
//
// Commands: {"cmd":"insert","index":0,"text":"x"}, {"cmd":"state"},
// {"cmd":"quit"}. Events: {"event":"status","status":...},
// {"event":"synced"}, and the reply to "state":
// {"event":"state","text":...,"peers":[awareness names],"synced":bool}.
import * as Y from 'yjs'
import { WebsocketProvider } from 'y-websocket'
import WebSocket from 'ws'
import readline from 'node:readline'

const [serverUrl, room, userId] = process.argv.slice(2)
const doc = new Y.Doc()
const text = doc.getText('body')
const provider = new WebsocketProvider(serverUrl, room, doc, {
  WebSocketPolyfill: WebSocket,
  params: { userId },
  // Reconnect quickly after a server restart.
  maxBackoffTime: 500,
})
provider.awareness.setLocalStateField('user', { name: userId })

const out = (obj) => process.stdout.write(JSON.stringify(obj) + '\n')
provider.on('status', (e) => out({ event: 'status', status: e.status }))
provider.on('sync', (synced) => { if (synced) out({ event: 'synced' }) })

const rl = readline.createInterface({ input: process.stdin })
rl.on('line', (line) => {
  const msg = JSON.parse(line)
  if (msg.cmd === 'insert') {
    text.insert(Math.min(msg.index, text.length), msg.text)
  } else if (msg.cmd === 'state') {
    const peers = [...provider.awareness.getStates().values()].map((s) => s.user && s.user.name).filter(Boolean).sort()
    out({ event: 'state', text: text.toString(), peers, synced: provider.synced })
  } else if (msg.cmd === 'quit') {
    provider.destroy()
    process.exit(0)
  }
})
rl.on('close', () => { provider.destroy(); process.exit(0) })
