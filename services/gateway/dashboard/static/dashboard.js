// Live progress: the analysis' Server-Sent Events (the API's stream, relayed by the dashboard)
// signal each status change and scored utterance; htmx then re-renders the results fragment on
// the server. The stream is closed on a terminal status so the browser does not reconnect.
const TERMINAL = ["succeeded", "failed", "canceled"];

document.addEventListener("DOMContentLoaded", () => {
  for (const target of document.querySelectorAll("[data-live-events]")) {
    const source = new EventSource(target.dataset.liveEvents);
    // Events come in bursts (a chunk of utterances at a time): one re-render per burst, shortly
    // after its first event, keeps the page current without a request per utterance.
    let pending = null;
    const refresh = () => {
      pending ??= setTimeout(() => {
        pending = null;
        htmx.trigger(target, "refresh");
      }, 500);
    };
    source.addEventListener("utterance", refresh);
    source.addEventListener("summary", refresh);
    source.addEventListener("status", (event) => {
      refresh();
      if (TERMINAL.includes(JSON.parse(event.data).status)) {
        source.close();
        // The fragment answers HX-Refresh once it sees the final status; should that request be
        // turned away (rate limit), keep asking until the page reloads.
        setInterval(() => htmx.trigger(target, "refresh"), 3000);
      }
    });
    window.addEventListener("pagehide", () => source.close());
  }
});

// Timestamps arrive in UTC (<time datetime data-local-time>); show them in the browser's zone and
// locale, keeping UTC in the tooltip.
const localTimes = (root) => {
  for (const element of root.querySelectorAll("time[data-local-time]")) {
    const when = new Date(element.getAttribute("datetime"));
    if (!Number.isNaN(when.getTime())) {
      element.textContent = when.toLocaleString(undefined, { dateStyle: "short", timeStyle: "short" });
    }
  }
};
document.addEventListener("DOMContentLoaded", () => localTimes(document));
document.addEventListener("htmx:afterSwap", (event) => localTimes(event.target));
