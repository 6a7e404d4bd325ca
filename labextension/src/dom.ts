/**
 * Building DOM from untrusted text: every string goes in as `textContent`, never as
 * HTML. Views use only these helpers to put request text on the page.
 */

export interface IElOptions {
  cls?: string;
  text?: string;
  title?: string;
  attrs?: Record<string, string>;
}

export function el<K extends keyof HTMLElementTagNameMap>(
  tag: K,
  options: IElOptions = {},
  children: (Node | null | undefined)[] = []
): HTMLElementTagNameMap[K] {
  const node = document.createElement(tag);
  if (options.cls) {
    node.className = options.cls;
  }
  if (options.text !== undefined) {
    node.textContent = options.text;
  }
  if (options.title !== undefined) {
    node.title = options.title;
  }
  for (const [k, v] of Object.entries(options.attrs ?? {})) {
    node.setAttribute(k, v);
  }
  for (const child of children) {
    if (child) {
      node.appendChild(child);
    }
  }
  return node;
}

export function button(text: string, cls: string, onClick: () => void): HTMLButtonElement {
  const b = el('button', { cls: `jp-Button fednb-button ${cls}`, text });
  b.addEventListener('click', onClick);
  return b;
}

/** A two-column table of (label, text) pairs. */
export function factsTable(facts: [string, string][], cls = 'fednb-facts'): HTMLTableElement {
  return el(
    'table',
    { cls },
    facts.map(([k, v]) => el('tr', {}, [el('th', { text: k }), el('td', { text: v })]))
  );
}

/** A table with a header row; every cell is text. */
export function table(header: string[], rows: string[][], cls = 'fednb-table'): HTMLTableElement {
  return el('table', { cls }, [
    el('thead', {}, [
      el(
        'tr',
        {},
        header.map(h => el('th', { text: h }))
      )
    ]),
    el(
      'tbody',
      {},
      rows.map(r =>
        el(
          'tr',
          {},
          r.map(c => el('td', { text: c }))
        )
      )
    )
  ]);
}

export function clear(node: HTMLElement): void {
  while (node.firstChild) {
    node.removeChild(node.firstChild);
  }
}
