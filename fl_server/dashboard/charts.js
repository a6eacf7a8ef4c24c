// Small canvas line charts (no library): lineChart(canvas, series, options).
// series: [{name, color, points: [[x, y], ...]}]; options: {xLabel, yLabel, yMin, yMax, percent}.
// The canvas gets data-points = total number of points drawn (the browser test watches it).
"use strict";

const Charts = (() => {
  function niceStep(range, ticks) {
    const raw = range / Math.max(ticks, 1);
    const mag = Math.pow(10, Math.floor(Math.log10(raw || 1)));
    const norm = raw / mag;
    return (norm < 1.5 ? 1 : norm < 3 ? 2 : norm < 7 ? 5 : 10) * mag;
  }

  function fmt(v, percent, step) {  // as many decimals as the tick step needs
    const scale = percent ? 100 : 1;
    const decimals = Math.min(6, Math.max(0, -Math.floor(Math.log10(step * scale || 1))));
    if (!percent && Math.abs(v) >= 10000) return v.toExponential(1);
    return (v * scale).toFixed(decimals) + (percent ? "%" : "");
  }

  function lineChart(canvas, series, options = {}) {
    const dpr = window.devicePixelRatio || 1;
    const width = canvas.clientWidth || 480, height = canvas.clientHeight || 260;
    canvas.width = Math.round(width * dpr);
    canvas.height = Math.round(height * dpr);
    const ctx = canvas.getContext("2d");
    ctx.setTransform(dpr, 0, 0, dpr, 0, 0);
    ctx.fillStyle = "#ffffff";
    ctx.fillRect(0, 0, width, height);
    const pts = series.flatMap((s) => s.points.filter((p) => Number.isFinite(p[1])));
    canvas.dataset.points = String(pts.length);
    ctx.font = "12px system-ui, sans-serif";
    if (!pts.length) {
      ctx.fillStyle = "#6b7483";
      ctx.textAlign = "center";
      ctx.fillText(options.empty || "no data yet", width / 2, height / 2);
      return;
    }
    const pad = { l: 52, r: 14, t: 22, b: 34 };
    let xMin = Math.min(...pts.map((p) => p[0])), xMax = Math.max(...pts.map((p) => p[0]));
    let yMin = options.yMin ?? Math.min(...pts.map((p) => p[1]));
    let yMax = options.yMax ?? Math.max(...pts.map((p) => p[1]));
    if (xMax === xMin) { xMax += 1; xMin -= xMin > 0 ? 1 : 0; }
    if (yMax === yMin) { yMax += Math.abs(yMax) * 0.1 || 1; yMin -= Math.abs(yMin) * 0.1 || 0; }
    const X = (x) => pad.l + ((x - xMin) / (xMax - xMin)) * (width - pad.l - pad.r);
    const Y = (y) => height - pad.b - ((y - yMin) / (yMax - yMin)) * (height - pad.t - pad.b);
    // grid and ticks
    ctx.strokeStyle = "#e8ebf0"; ctx.fillStyle = "#6b7483"; ctx.lineWidth = 1;
    const yStep = niceStep(yMax - yMin, 5);
    ctx.textAlign = "right"; ctx.textBaseline = "middle";
    for (let v = Math.ceil(yMin / yStep) * yStep; v <= yMax + 1e-12; v += yStep) {
      ctx.beginPath(); ctx.moveTo(pad.l, Y(v)); ctx.lineTo(width - pad.r, Y(v)); ctx.stroke();
      ctx.fillText(fmt(v, options.percent, yStep), pad.l - 6, Y(v));
    }
    const xStep = Math.max(1, Math.round(niceStep(xMax - xMin, 8)));
    ctx.textAlign = "center"; ctx.textBaseline = "top";
    for (let v = Math.ceil(xMin / xStep) * xStep; v <= xMax; v += xStep) {
      ctx.beginPath(); ctx.moveTo(X(v), height - pad.b); ctx.lineTo(X(v), height - pad.b + 4); ctx.stroke();
      ctx.fillText(String(v), X(v), height - pad.b + 6);
    }
    ctx.strokeStyle = "#9aa3b2";
    ctx.beginPath(); ctx.moveTo(pad.l, pad.t); ctx.lineTo(pad.l, height - pad.b); ctx.lineTo(width - pad.r, height - pad.b); ctx.stroke();
    if (options.xLabel) { ctx.fillText(options.xLabel, (pad.l + width - pad.r) / 2, height - 15); }
    // series
    series.forEach((s) => {
      const p = s.points.filter((q) => Number.isFinite(q[1]));
      ctx.strokeStyle = s.color; ctx.fillStyle = s.color; ctx.lineWidth = 2;
      ctx.beginPath();
      p.forEach((q, i) => (i ? ctx.lineTo(X(q[0]), Y(q[1])) : ctx.moveTo(X(q[0]), Y(q[1]))));
      ctx.stroke();
      p.forEach((q) => { ctx.beginPath(); ctx.arc(X(q[0]), Y(q[1]), 3, 0, 2 * Math.PI); ctx.fill(); });
    });
    // legend
    ctx.textAlign = "left"; ctx.textBaseline = "middle";
    let lx = pad.l + 6;
    series.forEach((s) => {
      ctx.fillStyle = s.color; ctx.fillRect(lx, 7, 12, 3);
      ctx.fillStyle = "#1d2430"; ctx.fillText(s.name, lx + 16, 9);
      lx += ctx.measureText(s.name).width + 34;
    });
  }

  function downloadPng(canvas, name) {
    const a = document.createElement("a");
    a.href = canvas.toDataURL("image/png");
    a.download = name + ".png";
    document.body.appendChild(a); a.click(); a.remove();
  }

  return { lineChart, downloadPng };
})();
