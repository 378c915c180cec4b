// Live progress: the analysis' Server-Sent Events (the API's stream, relayed by the dashboard)
// signal each status change and scored utterance; htmx then re-renders the results fragment on
// the server. The stream is closed on a terminal status so the browser does not reconnect.
const TERMINAL = ["succeeded", "failed", "canceled"];

document.addEventListener("DOMContentLoaded", () => {
  for (const target of document.querySelectorAll("[data-live-events]")) {
    const source = new EventSource(target.dataset.liveEvents);
    const refresh = () => htmx.trigger(target, "refresh");
    source.addEventListener("utterance", refresh);
    source.addEventListener("summary", refresh);
    source.addEventListener("status", (event) => {
      if (TERMINAL.includes(JSON.parse(event.data).status)) source.close();
      refresh();
    });
    window.addEventListener("pagehide", () => source.close());
  }
});
