// rankalign arena: the voting page (pairs side by side, K-wise drag-and-drop ranking with tie groups,
// keyboard shortcuts) and the live leaderboard. Every text from the server is set with textContent,
// never parsed as HTML; the leaderboard fragment is HTML escaped by the server's templates.
"use strict";

(function () {
  function newRequestId() {
    if (window.crypto && crypto.randomUUID) return crypto.randomUUID();
    const bytes = new Uint8Array(16);
    crypto.getRandomValues(bytes);
    return Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
  }

  function candidateText(candidate) {
    return candidate.response || candidate.content || candidate.name;
  }

  // ----------------------------------------------------------------------------------------- voting
  function VotePage(root) {
    const k = parseInt(root.dataset.k, 10) || 2;
    const status = document.getElementById("status");
    const rationale = document.getElementById("rationale");
    const pair = document.getElementById("pair");
    const ranking = document.getElementById("ranking");
    const promptBox = document.getElementById("prompt");
    const groupsList = document.getElementById("groups");
    let task = null;
    let requestId = null;
    let groups = [];        // array of arrays of candidate indices, best group first
    let selected = null;    // candidate index selected with the keyboard
    let busy = false;

    function say(text, isError) {
      status.textContent = text;
      status.className = isError ? "error" : "";
    }

    async function load() {
      say("Loading the next comparison…");
      const response = await fetch("/api/next?k=" + k, { credentials: "same-origin" });
      const body = await response.json();
      if (!response.ok) { say(body.error || "Could not load a task.", true); return; }
      const progress = document.getElementById("progress");
      progress.textContent = body.votes + " votes" + (body.remaining == null ? "" : ", " + body.remaining + " left");
      if (body.done) {
        pair.hidden = true; ranking.hidden = true; promptBox.hidden = true;
        say("Thank you: " + body.reason + ".");
        task = null;
        return;
      }
      task = body;
      requestId = newRequestId();
      rationale.value = "";
      if (task.prompt) {
        promptBox.hidden = false;
        promptBox.textContent = task.prompt.text;
      } else {
        promptBox.hidden = true;
      }
      if (task.candidates.length === 2) {
        ranking.hidden = true; pair.hidden = false;
        ["side-a", "side-b"].forEach(function (id, i) {
          const card = document.getElementById(id);
          card.querySelector("h2").textContent = (i === 0 ? "A" : "B") +
            (task.prompt ? "" : " · " + task.candidates[i].name);
          card.querySelector(".body").textContent = candidateText(task.candidates[i]);
          card.dataset.item = task.candidates[i].id;
        });
      } else {
        pair.hidden = true; ranking.hidden = false;
        groups = task.candidates.map(function (_, i) { return [i]; });
        selected = null;
        renderGroups();
      }
      say("");
    }

    async function submit(ranks) {
      if (!task || busy) return;
      busy = true;
      const payload = {
        prompt: task.prompt ? task.prompt.id : null,
        candidates: task.candidates.map(function (c) { return c.id; }),
        ranks: ranks,
        request_id: requestId,
      };
      if (rationale.value.trim()) payload.comment = rationale.value.trim();
      // a retry after a network error re-sends the same request_id: the server stores the vote once
      for (let attempt = 0; attempt < 3; attempt++) {
        try {
          const response = await fetch("/api/votes", {
            method: "POST", credentials: "same-origin",
            headers: { "Content-Type": "application/json" }, body: JSON.stringify(payload),
          });
          const body = await response.json();
          busy = false;
          if (response.status === 201 || response.status === 200) {
            say("Saved (vote " + body.id + ").");
            await load();
            say("Saved (vote " + body.id + "). Next one:");
          } else {
            say(body.error || ("Error " + response.status), true);
          }
          return;
        } catch (error) {
          await new Promise(function (resolve) { setTimeout(resolve, 500 * (attempt + 1)); });
        }
      }
      busy = false;
      say("Network error: your vote was not confirmed. Try again.", true);
    }

    function ranksFromGroups() {
      const ranks = new Array(task.candidates.length);
      groups.forEach(function (group, level) { group.forEach(function (i) { ranks[i] = level; }); });
      return ranks;
    }

    // -- K-wise ranking: rows of tied candidates; pointer-event drag and drop --------------------------
    function renderGroups() {
      groupsList.textContent = "";
      groupsList.appendChild(gap(0));
      groups.forEach(function (group, level) {
        const row = document.createElement("li");
        row.className = "group";
        row.dataset.level = String(level);
        const label = document.createElement("span");
        label.className = "level";
        label.textContent = "#" + (level + 1) + (group.length > 1 ? " (tie)" : "");
        row.appendChild(label);
        group.forEach(function (i) {
          const card = document.createElement("div");
          card.className = "chip" + (selected === i ? " selected" : "");
          card.dataset.index = String(i);
          card.dataset.item = task.candidates[i].id;
          const key = document.createElement("kbd");
          key.textContent = String(i + 1);
          const name = document.createElement("strong");
          name.textContent = task.prompt ? "" : task.candidates[i].name;
          const text = document.createElement("div");
          text.className = "chip-text";
          text.textContent = candidateText(task.candidates[i]);
          card.append(key, name, text);
          card.addEventListener("pointerdown", startDrag);
          row.appendChild(card);
        });
        groupsList.appendChild(row);
        groupsList.appendChild(gap(level + 1));
      });
    }

    function gap(position) {
      const item = document.createElement("li");
      item.className = "gap";
      item.dataset.position = String(position);
      return item;
    }

    function moveTo(index, targetLevel, asNewGroup) {
      const next = groups.map(function (g) { return g.filter(function (i) { return i !== index; }); });
      if (asNewGroup) {
        next.splice(targetLevel, 0, [index]);
      } else {
        next[targetLevel].push(index);
      }
      groups = next.filter(function (g) { return g.length > 0; });
    }

    let drag = null;
    function startDrag(event) {
      if (event.button !== 0) return;
      event.preventDefault();
      const card = event.currentTarget;
      drag = { card: card, index: parseInt(card.dataset.index, 10), x: event.clientX, y: event.clientY };
      card.classList.add("dragging");
      document.addEventListener("pointermove", moveDrag);
      document.addEventListener("pointerup", endDrag);
    }
    function moveDrag(event) {
      if (!drag) return;
      drag.card.style.transform = "translate(" + (event.clientX - drag.x) + "px," + (event.clientY - drag.y) + "px)";
      document.querySelectorAll(".drop-target").forEach(function (el) { el.classList.remove("drop-target"); });
      const target = dropTarget(event);
      if (target) target.classList.add("drop-target");
    }
    function dropTarget(event) {
      drag.card.style.visibility = "hidden";
      const under = document.elementFromPoint(event.clientX, event.clientY);
      drag.card.style.visibility = "";
      return under ? under.closest(".gap, .group") : null;
    }
    function endDrag(event) {
      document.removeEventListener("pointermove", moveDrag);
      document.removeEventListener("pointerup", endDrag);
      if (!drag) return;
      const target = dropTarget(event);
      const index = drag.index;
      drag = null;
      // positions refer to the rows before the move; moveTo drops the row the card left if it is empty
      if (target && target.classList.contains("gap")) {
        moveTo(index, parseInt(target.dataset.position, 10), true);
      } else if (target && target.classList.contains("group")) {
        moveTo(index, parseInt(target.dataset.level, 10), false);
      }
      renderGroups();
    }

    // -- keyboard shortcuts ----------------------------------------------------------------------------
    document.addEventListener("keydown", function (event) {
      if (!task || event.target === rationale) return;
      if (task.candidates.length === 2) {
        if (event.key === "ArrowLeft" || event.key === "a") { event.preventDefault(); submit([0, 1]); }
        else if (event.key === "ArrowRight" || event.key === "b") { event.preventDefault(); submit([1, 0]); }
        else if (event.key === "t" || event.key === "=" || event.key === "ArrowDown") { event.preventDefault(); submit([0, 0]); }
        return;
      }
      const digit = parseInt(event.key, 10);
      if (digit >= 1 && digit <= task.candidates.length) {
        selected = digit - 1;
        renderGroups();
      } else if ((event.key === "ArrowUp" || event.key === "ArrowDown") && selected !== null) {
        event.preventDefault();
        const from = groups.findIndex(function (g) { return g.indexOf(selected) >= 0; });
        const up = event.key === "ArrowUp";
        if (event.shiftKey) {
          moveTo(selected, up ? from : from + 1, true);
        } else {
          const target = up ? from - 1 : from + 1;
          if (target >= 0 && target < groups.length) moveTo(selected, target, false);
        }
        renderGroups();
      } else if (event.key === "Enter") {
        event.preventDefault();
        submit(ranksFromGroups());
      }
    });

    document.getElementById("choose-a").addEventListener("click", function () { submit([0, 1]); });
    document.getElementById("choose-b").addEventListener("click", function () { submit([1, 0]); });
    document.getElementById("choose-tie").addEventListener("click", function () { submit([0, 0]); });
    document.getElementById("submit-ranking").addEventListener("click", function () { submit(ranksFromGroups()); });
    load();
  }

  // ----------------------------------------------------------------------------------------- leaderboard
  function LiveBoard(root) {
    async function refresh() {
      try {
        const response = await fetch("/leaderboard/board", { credentials: "same-origin" });
        if (response.ok) root.innerHTML = await response.text();  // server-escaped fragment
      } catch (error) { /* keep the last board */ }
    }
    setInterval(refresh, 3000);
  }

  document.addEventListener("DOMContentLoaded", function () {
    const vote = document.getElementById("vote");
    if (vote) VotePage(vote);
    const board = document.getElementById("board");
    if (board && board.dataset.live) LiveBoard(board);
  });
})();
