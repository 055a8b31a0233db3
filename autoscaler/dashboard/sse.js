// Server-Sent Events over fetch(): EventSource cannot send an Authorization header, and the token
// must never be put in a URL. Parses the event stream (text/event-stream) of a Response body.

// One event's text at most: a stream that sends more without a line break is cut off, not buffered.
export const MAX_EVENT_CHARS = 1 << 20;

/** Calls onData(data) for each complete event's data (multi-line data joined by "\n"); resolves at the end. */
export async function readEvents(response, onData, signal) {
  const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = "";
  let data = [];
  let size = 0;
  const onAbort = () => reader.cancel().catch(() => {});
  signal?.addEventListener("abort", onAbort);
  try {
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      buffer += value;
      let newline;
      while ((newline = buffer.search(/\r\n|\r|\n/)) >= 0) {
        if (newline === buffer.length - 1 && buffer[newline] === "\r") break; // its \n may be in the next chunk
        const line = buffer.slice(0, newline);
        buffer = buffer.slice(newline + (buffer.startsWith("\r\n", newline) ? 2 : 1));
        if (line === "") {
          if (data.length) onData(data.join("\n"));
          data = [];
          size = 0;
        } else if (line.startsWith("data:")) {
          data.push(line.slice(line.startsWith("data: ") ? 6 : 5));
          size += line.length;
          if (size > MAX_EVENT_CHARS) throw new Error(`the event stream sent an event longer than ${MAX_EVENT_CHARS} characters`);
        } // comments (": keep-alive"), event:, id:, retry: carry nothing the dashboard needs
      }
      if (buffer.length > MAX_EVENT_CHARS) {
        throw new Error(`the event stream sent a line longer than ${MAX_EVENT_CHARS} characters`);
      }
    }
    // An event cut off before its blank line is not dispatched (the SSE specification's rule).
  } catch (error) {
    reader.cancel().catch(() => {}); // close the stream: nothing more of it is read
    if (!signal?.aborted) throw error;
  } finally {
    signal?.removeEventListener("abort", onAbort);
  }
}
