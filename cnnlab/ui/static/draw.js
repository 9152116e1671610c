/* The drawing canvas of "Try it": white ink on black (as MNIST and the digits are stored),
   drawn with the mouse, a pen or a finger; each finished stroke is handed to `onStroke`. */
(function (global) {
  "use strict";

  function pad(canvas, onStroke) {
    const context = canvas.getContext("2d");
    let drawing = false;
    let width = 22;

    function clear() {
      context.fillStyle = "#000";
      context.fillRect(0, 0, canvas.width, canvas.height);
    }

    function at(event) {
      const frame = canvas.getBoundingClientRect();
      const scale = canvas.width / frame.width;
      return [(event.clientX - frame.left) * scale, (event.clientY - frame.top) * scale];
    }

    function dot(point) {
      context.beginPath();
      context.arc(point[0], point[1], width / 2, 0, 2 * Math.PI);
      context.fill();
    }

    canvas.addEventListener("pointerdown", (event) => {
      drawing = true;
      canvas.setPointerCapture?.(event.pointerId);
      context.fillStyle = context.strokeStyle = "#fff";
      context.lineWidth = width;
      context.lineCap = context.lineJoin = "round";
      const point = at(event);
      dot(point);
      context.beginPath();
      context.moveTo(point[0], point[1]);
      event.preventDefault();
    });
    canvas.addEventListener("pointermove", (event) => {
      if (!drawing) return;
      const point = at(event);
      context.lineTo(point[0], point[1]);
      context.stroke();
      context.beginPath();
      context.moveTo(point[0], point[1]);
    });
    const finish = () => {
      if (!drawing) return;
      drawing = false;
      onStroke();
    };
    canvas.addEventListener("pointerup", finish);
    canvas.addEventListener("pointercancel", finish);
    clear();
    return {
      clear,
      setWidth(value) { width = value; },
      blob: () => new Promise((resolve) => canvas.toBlob(resolve, "image/png")),
    };
  }

  global.CnnlabDraw = { pad };
})(window);
