/** One server-sent event (https://html.spec.whatwg.org/multipage/server-sent-events.html). */
export type ServerSentEvent = { id: string | undefined; event: string; data: string };

/**
 * Reads server-sent events off a response body: fields per line, an empty line ends an event,
 * lines starting with ":" are comments (keep-alives). Ends when the body does.
 */
export async function* readEvents(body: ReadableStream<Uint8Array>): AsyncGenerator<ServerSentEvent> {
  const decoder = new TextDecoder();
  let buffer = '';
  let event: { id?: string; event?: string; data: string[] } = { data: [] };
  for await (const chunk of body) {
    buffer += decoder.decode(chunk, { stream: true });
    let newline = buffer.search(/\r\n|\n|\r/);
    while (newline !== -1) {
      const line = buffer.slice(0, newline);
      buffer = buffer.slice(newline + (buffer.startsWith('\r\n', newline) ? 2 : 1));
      newline = buffer.search(/\r\n|\n|\r/);
      if (line === '') {
        if (event.data.length > 0) yield { id: event.id, event: event.event ?? 'message', data: event.data.join('\n') };
        event = { data: [] };
        continue;
      }
      if (line.startsWith(':')) continue;
      const colon = line.indexOf(':');
      const field = colon === -1 ? line : line.slice(0, colon);
      const value = colon === -1 ? '' : line.slice(colon + 1).replace(/^ /, '');
      if (field === 'data') event.data.push(value);
      else if (field === 'id') event.id = value;
      else if (field === 'event') event.event = value;
    }
  }
}
