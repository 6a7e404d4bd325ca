/**
 * A held result's review, as the owner reads it before release: the decision and its
 * consequences first (what leaves, to whom, from which dataset, at what ε), then the
 * values (small arrays in full, large ones summarised with a histogram), the metrics
 * and the change since the previous release. The pure helpers are tested under jest
 * (test/review.spec.ts); the DOM builders put every string in as text (dom.ts).
 */
import { IResultReview, ITensorReview, Nested, Num } from './api';
import { el, table } from './dom';

/** A review number as people read it: ints as ints, floats to 6 significant digits. */
export function fmtNum(v: Num | null | undefined): string {
  if (v === null || v === undefined) {
    return '-';
  }
  if (typeof v !== 'number') {
    return String(v);
  }
  return Number.isInteger(v) ? String(v) : String(Number(v.toPrecision(6)));
}

export function nestedText(v: Nested): string {
  return Array.isArray(v) ? `[${v.map(nestedText).join(', ')}]` : fmtNum(v);
}

export function paramsText(params: Record<string, unknown>): string {
  const parts = Object.entries(params).map(([k, v]) => `${k}=${JSON.stringify(v)}`);
  return parts.length ? parts.join(', ') : 'none';
}

function plural(n: number, word: string): string {
  return `${n} ${word}${n === 1 ? '' : 's'}`;
}

/** What releasing hands over, and to whom (the same words as the CLI and the Inbox). */
export function releasedText(r: IResultReview): string {
  const values = r.tensors.reduce((n, t) => n + t.size, 0);
  const parts = [`${plural(r.tensors.length, 'tensor')} (${values} values)`];
  const metrics = Object.keys(r.metrics).length;
  if (metrics) {
    parts.push(plural(metrics, 'metric'));
  }
  parts.push(`num_examples ${fmtNum(r.num_examples)}`);
  return `to ${r.run.scientist}: ${parts.join(', ')}`;
}

export function epsilonText(epsilon: number | null): string {
  return epsilon === null
    ? 'none: no differential privacy, these exact values leave the hospital'
    : `${fmtNum(epsilon)} (already charged; the values are noised)`;
}

/** The diff as rows: tensor, change, largest |difference|, changed values. */
export function diffRows(r: IResultReview): string[][] {
  if (!r.diff) {
    return [];
  }
  const rows = r.diff.tensors.map(d => [
    d.name,
    d.status,
    fmtNum(d.max_abs_diff),
    (d.changed ?? []).map(c => `[${c.index.join(', ')}] ${fmtNum(c.before)} → ${fmtNum(c.after)}`).join('; ')
  ]);
  for (const m of r.diff.metrics) {
    rows.push([`metric ${m.name}`, 'changed', '', `${fmtNum(m.before)} → ${fmtNum(m.after)}`]);
  }
  return rows;
}

const SVG = 'http://www.w3.org/2000/svg';

function svg(tag: string, attrs: Record<string, string | number>, text?: string): SVGElement {
  const node = document.createElementNS(SVG, tag);
  for (const [k, v] of Object.entries(attrs)) {
    node.setAttribute(k, String(v));
  }
  if (text !== undefined) {
    node.textContent = text;
  }
  return node;
}

/** Bars of a histogram, its range under them; each bar's tooltip gives its bin and count. */
export function histogramSvg(h: { edges: Num[]; counts: number[] }, width = 320, height = 90): SVGElement {
  const root = svg('svg', { class: 'fednb-histogram', width, height, style: 'font: 10px sans-serif' });
  const top = Math.max(1, ...h.counts);
  const barW = (width - 8) / h.counts.length;
  const plotH = height - 18;
  h.counts.forEach((c, i) => {
    const bh = (plotH * c) / top;
    const bar = svg('rect', { x: 4 + i * barW, y: plotH - bh, width: Math.max(barW - 1, 1), height: bh, fill: '#3b6ea8' });
    bar.appendChild(svg('title', {}, `${fmtNum(h.edges[i])} to ${fmtNum(h.edges[i + 1])}: ${c}`));
    root.appendChild(bar);
  });
  root.appendChild(svg('line', { x1: 4, y1: plotH, x2: width - 4, y2: plotH, stroke: '#999' }));
  root.appendChild(svg('text', { x: 4, y: height - 4 }, fmtNum(h.edges[0])));
  root.appendChild(svg('text', { x: width - 4, y: height - 4, 'text-anchor': 'end' }, fmtNum(h.edges[h.edges.length - 1])));
  return root;
}

function valuesView(t: ITensorReview): HTMLElement {
  const v = t.values as Nested;
  if (t.shape.length === 1 && Array.isArray(v)) {
    return table(
      v.map((_, i) => String(i)),
      [v.map(x => nestedText(x))],
      'fednb-table fednb-values'
    );
  }
  if (t.shape.length === 2 && Array.isArray(v)) {
    return table(
      ['', ...Array.from({ length: t.shape[1] }, (_, j) => String(j))],
      v.map((row, i) => [String(i), ...(row as Nested[]).map(nestedText)]),
      'fednb-table fednb-values'
    );
  }
  return el('code', { cls: 'fednb-values', text: nestedText(v) });
}

function summaryView(t: ITensorReview): HTMLElement {
  const s = t.summary;
  const cells: [string, Num | null][] = [
    ['min', s.min],
    ['max', s.max],
    ['mean', s.mean],
    ['std', s.std],
    ['NaN', s.nan],
    ['Inf', s.inf]
  ];
  const box = el('div', { cls: 'fednb-summary-box', attrs: { style: 'display:flex;gap:16px;align-items:flex-end;flex-wrap:wrap' } }, [
    table(
      cells.map(c => c[0]),
      [cells.map(c => fmtNum(c[1]))],
      'fednb-table fednb-summary'
    )
  ]);
  box.appendChild(s.histogram ? (histogramSvg(s.histogram) as unknown as HTMLElement) : el('i', { text: 'no finite values' }));
  return box;
}

function tensorView(t: ITensorReview): HTMLElement {
  return el('div', { cls: 'fednb-tensor', attrs: { 'data-tensor': t.name, style: 'margin: 6px 0' } }, [
    el('div', {}, [
      el('b', { text: t.name }),
      el('span', { cls: 'fednb-request-meta', text: ` ${t.dtype} (${t.shape.join(', ')}), ${plural(t.size, 'value')}` })
    ]),
    t.values !== null ? valuesView(t) : summaryView(t)
  ]);
}

const CARD = 'border:1px solid var(--jp-border-color2);border-radius:6px;padding:8px 12px;margin:8px 0';

/** The decision line: what leaves, to whom, from where, at what ε. */
export function decisionView(r: IResultReview): HTMLElement {
  const dp = r.run.epsilon !== null;
  const style = `border-left:5px solid ${dp ? '#1f6feb' : '#b45309'};background:${dp ? 'rgba(31,111,235,0.08)' : 'rgba(180,83,9,0.08)'};padding:8px 12px;border-radius:4px`;
  return el('div', { cls: 'fednb-decision', attrs: { style } }, [
    el('div', { attrs: { style: 'font-size: 1.15em' } }, [el('b', { text: 'Releasing sends ' }), el('span', { text: releasedText(r) })]),
    el('div', {
      text: `from dataset ${r.run.dataset} (${fmtNum(r.run.num_examples)} examples) · ε charged: ${epsilonText(r.run.epsilon)}`
    }),
    el('div', {
      cls: 'fednb-request-meta',
      text: `${r.request.function_name} (${r.request.kind}) · parameters ${paramsText(r.run.params)} · sha256 ${r.request.code_hash.slice(0, 16)}… · run ${r.run.id}`
    })
  ]);
}

/** Values, metrics and the change since the previous release. */
export function reviewBodyView(r: IResultReview): HTMLElement {
  const metrics = Object.entries(r.metrics);
  const released = el('div', { cls: 'fednb-card', attrs: { style: CARD } }, [
    el('h3', { text: 'What will be released' }),
    ...(r.tensors.length ? r.tensors.map(tensorView) : [el('i', { text: 'no tensors' })]),
    el('h4', { text: 'Metrics' }),
    metrics.length ? table(metrics.map(m => m[0]), [metrics.map(m => fmtNum(m[1]))]) : el('i', { text: 'none' })
  ]);
  const diff = el('div', { cls: 'fednb-card fednb-result-diff', attrs: { style: CARD } }, [el('h3', { text: 'Change since the previous release' })]);
  if (r.diff && r.previous) {
    diff.appendChild(el('div', { cls: 'fednb-request-meta', text: `against run ${r.previous.id} (parameters ${paramsText(r.previous.params)}), released before` }));
    diff.appendChild(table(['', 'change', 'max |difference|', 'changed values'], diffRows(r)));
  } else {
    diff.appendChild(el('i', { text: 'No earlier released run of this request to compare with.' }));
  }
  return el('div', { cls: 'fednb-result-review' }, [released, diff]);
}
