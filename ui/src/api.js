// The server's public HTTP API, as the page uses it: OpenAI's /v1/models and streamed
// /v1/chat/completions, and the conversation store (/v1/conversations).

/** An error answer of the server: `status` (0: the server could not be reached) and its message. */
export class ApiError extends Error {
  constructor(status, message, param = null) {
    super(message);
    this.status = status;
    this.param = param;
  }
}

export class Api {
  /** @param {() => string} key the API key to send ("" for none) */
  constructor(key) {
    this.key = key;
  }

  headers(json) {
    const h = {};
    if (json) h["Content-Type"] = "application/json";
    const key = this.key();
    if (key) h.Authorization = `Bearer ${key}`;
    return h;
  }

  async request(method, path, body, signal) {
    let response;
    try {
      response = await fetch(path, {
        method,
        headers: this.headers(body !== undefined),
        body: body === undefined ? undefined : JSON.stringify(body),
        signal,
      });
    } catch (err) {
      if (err.name === "AbortError") throw err;
      throw new ApiError(0, "The server could not be reached. Is inferd still running?");
    }
    if (!response.ok) throw await errorOf(response, Boolean(this.key()));
    return response;
  }

  async json(method, path, body) {
    return (await this.request(method, path, body)).json();
  }

  models() {
    return this.json("GET", "/v1/models");
  }

  conversations() {
    return this.json("GET", "/v1/conversations?limit=200");
  }

  conversation(id) {
    return this.json("GET", `/v1/conversations/${encodeURIComponent(id)}`);
  }

  rename(id, title) {
    return this.json("PATCH", `/v1/conversations/${encodeURIComponent(id)}`, { title });
  }

  remove(id) {
    return this.json("DELETE", `/v1/conversations/${encodeURIComponent(id)}`);
  }

  /**
   * Stream a chat completion: `onText(piece)` for each piece of the answer; resolves to
   * {usage, finishReason} (usage null when the server sent none). Abort with `signal`.
   */
  async chat(body, signal, onText) {
    const response = await this.request("POST", "/v1/chat/completions", body, signal);
    let usage = null;
    let finishReason = null;
    for await (const data of events(response.body)) {
      if (data.error) throw new ApiError(500, data.error.message || String(data.error));
      if (data.usage) usage = data.usage;
      const choice = data.choices && data.choices[0];
      if (!choice) continue;
      if (choice.delta && choice.delta.content) onText(choice.delta.content);
      if (choice.finish_reason) finishReason = choice.finish_reason;
    }
    return { usage, finishReason };
  }
}

async function errorOf(response, keyGiven) {
  let message = `${response.status} ${response.statusText}`;
  let param = null;
  try {
    const body = await response.json();
    const error = body.error;
    if (typeof error === "string") message = error;
    else if (error && error.message) ({ message, param } = error);
  } catch {
    // not JSON: keep the status line
  }
  if (response.status === 401) {
    message = keyGiven
      ? `The server refused this API key (${message}). Check the key in Settings.`
      : "This server needs an API key: enter yours in Settings.";
  }
  return new ApiError(response.status, message, param);
}

/** The JSON payloads of a server-sent event stream, until `data: [DONE]`. */
async function* events(stream) {
  const reader = stream.getReader();
  const decoder = new TextDecoder();
  let buffer = "";
  try {
    for (;;) {
      const { value, done } = await reader.read();
      if (done) return;
      buffer += decoder.decode(value, { stream: true });
      let end;
      while ((end = buffer.search(/\r?\n\r?\n/)) >= 0) {
        const event = buffer.slice(0, end);
        buffer = buffer.slice(end).replace(/^\r?\n\r?\n/, "");
        const data = event
          .split(/\r?\n/)
          .filter((line) => line.startsWith("data:"))
          .map((line) => line.slice(5).trimStart())
          .join("\n");
        if (!data) continue;
        if (data === "[DONE]") return;
        yield JSON.parse(data);
      }
    }
  } finally {
    reader.cancel().catch(() => {}); // a stopped or finished stream: let the connection go
  }
}
