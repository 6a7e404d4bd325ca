/**
 * What jsdom lacks and @lumino/dragdrop (under @lumino/widgets) needs at import: a
 * DragEvent class (JupyterLab's own @jupyterlab/testing shims it the same way).
 */
if (typeof globalThis.DragEvent === 'undefined') {
  globalThis.DragEvent = class DragEvent extends MouseEvent {
    constructor(type, init = {}) {
      super(type, init);
      this.dataTransfer = init.dataTransfer ?? null;
    }
  };
}
