// Job status page: poll the JSON API once a second and show progress, keyframes as they are
// rendered, and the image or a playable video when the job is done.
(function () {
  "use strict";
  var root = document.getElementById("job");
  var url = root.dataset.statusUrl;
  var ENDED = ["done", "failed", "cancelled"];
  var $ = function (id) { return document.getElementById(id); };

  function duration(seconds) {
    if (seconds === null || seconds === undefined) return "–";
    seconds = Math.max(0, Math.round(seconds));
    var m = Math.floor(seconds / 60), s = seconds % 60;
    return m ? m + " min " + s + " s" : s + " s";
  }

  function link(href, text) {
    var a = document.createElement("a");
    a.href = href;
    a.textContent = text;
    return a;
  }

  function showKeyframes(urls) {
    var box = $("keyframes");
    if (!box) return;
    for (var k = box.children.length; k < urls.length; k++) {
      var img = document.createElement("img");
      img.src = urls[k];
      img.alt = "keyframe " + k;
      img.title = "keyframe " + k;
      box.appendChild(img);
    }
  }

  function showResult(job) {
    var box = $("result");
    if (box.dataset.shown) return;
    box.dataset.shown = "1";
    var media;
    if ((job.result_type || "").indexOf("video/") === 0) {
      media = document.createElement("video");
      media.controls = true;
      media.loop = true;
      media.muted = true;
      media.playsInline = true;
      media.preload = "metadata";
    } else {
      media = document.createElement("img");
      media.alt = "result";
    }
    media.id = "result-media";
    media.src = job.result_url;
    box.appendChild(media);
    var downloads = $("downloads");
    downloads.appendChild(link(job.download_url, "Download the " + (job.kind === "zoom" ? "video" : "image")));
    if (job.gif_url) { downloads.appendChild(document.createTextNode(" · ")); downloads.appendChild(link(job.gif_url, "GIF")); }
    if (job.sidecar_url) { downloads.appendChild(document.createTextNode(" · ")); downloads.appendChild(link(job.sidecar_url, "Sidecar (JSON)")); }
  }

  function render(job) {
    var percent = job.state === "done" ? 100 : Math.floor(job.progress * 100);
    $("progress").value = percent;
    $("percent").textContent = percent + " %";
    $("state").textContent = job.state;
    $("stage").textContent = job.stage || "";
    $("queue").textContent = job.queue_position || "–";
    $("eta").textContent = duration(job.eta_seconds);
    $("warning").hidden = !job.warning;
    $("warning").textContent = job.warning || "";
    $("error").hidden = !job.error;
    $("error").textContent = job.error || "";
    root.dataset.state = job.state;
    showKeyframes(job.keyframe_urls || []);
    if (ENDED.indexOf(job.state) >= 0) $("cancel-form").hidden = true;
    if (job.state === "done") showResult(job);
  }

  function poll() {
    fetch(url, { cache: "no-store", headers: { Accept: "application/json" } })
      .then(function (response) {
        if (!response.ok) throw new Error("status " + response.status);
        return response.json();
      })
      .then(function (job) {
        render(job);
        if (ENDED.indexOf(job.state) < 0) setTimeout(poll, 1000);
      })
      .catch(function () { setTimeout(poll, 3000); });  // the server restarting: keep trying
  }
  poll();
})();
