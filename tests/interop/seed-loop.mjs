// The seed's TypeScript read loop (seeds: "Streaming patterns"), transcribed to JavaScript with its
// logic unchanged: frames split on "\n\n", `event:` and `data:` found by prefix. The only
// additions are the same prefix lookup for `id:` and reporting every frame, so the test can compare.
export async function seedReadLoop(url, headers, body, onFrame, write) {
  const res = await fetch(url, { method: "POST", headers: { ...headers, "Content-Type": "application/json", Accept: "text/event-stream" }, body });
  const reader = res.body.getReader();
  const decoder = new TextDecoder();
  let buf = "";
  while (true) {
    const { value, done } = await reader.read();
    if (done) break;
    buf += decoder.decode(value, { stream: true });
    let idx;
    while ((idx = buf.indexOf("\n\n")) !== -1) {
      const frame = buf.slice(0, idx);
      buf = buf.slice(idx + 2);
      const lines = frame.split("\n");
      const event = lines.find((l) => l.startsWith("event:"))?.slice(6).trim();
      const data = lines.find((l) => l.startsWith("data:"))?.slice(5).trim();
      const id = lines.find((l) => l.startsWith("id:"))?.slice(3).trim();
      onFrame(event, data, id);
      if (event === "token") write(JSON.parse(data).delta);
    }
  }
}
