// A loopback TCP proxy that cuts the connection carrying a request containing `marker`,
// `after` bytes into its response: a real dropped connection for resume tests.
import net from "node:net";

export async function startCutProxy(upstreamPort) {
  const state = { marker: null, after: 0, cuts: 0, connections: 0 };
  const server = net.createServer((down) => {
    state.connections += 1;
    const up = net.connect(upstreamPort, "127.0.0.1");
    let sent = 0;
    let limit = -1;
    const destroy = () => {
      down.destroy();
      up.destroy();
    };
    down.on("data", (chunk) => {
      if (state.marker && chunk.includes(state.marker)) {
        limit = sent + state.after;
        state.marker = null;
      }
      up.write(chunk);
    });
    up.on("data", (chunk) => {
      if (limit >= 0 && sent + chunk.length >= limit) {
        down.write(chunk.subarray(0, limit - sent), () => {
          state.cuts += 1;
          destroy();
        });
        limit = -1;
        return;
      }
      sent += chunk.length;
      down.write(chunk);
    });
    down.on("error", destroy);
    up.on("error", destroy);
    down.on("close", () => up.destroy());
    up.on("close", () => down.destroy());
  });
  await new Promise((resolve) => server.listen(0, "127.0.0.1", resolve));
  return {
    url: `http://127.0.0.1:${server.address().port}`,
    cutOn(marker, after) {
      state.marker = Buffer.from(marker);
      state.after = after;
    },
    get cuts() {
      return state.cuts;
    },
    close() {
      server.close();
    },
  };
}
