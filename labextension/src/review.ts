/**
 * A held result's review, as the owner reads it before release: the decision and its
 * consequences first (what leaves, to whom, from which dataset, at what ε), then the
 * values (small arrays in full, large ones summarised with a histogram), the metrics
 * and the change since the previous release. The pure helpers are tested under jest
 * (test/review.spec.ts); the DOM builders put every string in as text (dom.ts).
 */
import { INearestTensor, IResultReview, ITensorReview, Nested, Num } from './api';
import { el, table } from './dom';
import { badge, card, factsList, Tone } from './request';

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
  const root = svg('svg', {
    class: 'fednb-histogram',
    width,
    height,
    role: 'img',
    'aria-label': `histogram of ${h.counts.length} bins from ${fmtNum(h.edges[0])} to ${fmtNum(h.edges[h.edges.length - 1])}`
  });
  const top = Math.max(1, ...h.counts);
  const barW = (width - 8) / h.counts.length;
  const plotH = height - 18;
  h.counts.forEach((c, i) => {
    const bh = (plotH * c) / top;
    const bar = svg('rect', {
      x: 4 + i * barW,
      y: plotH - bh,
      width: Math.max(barW - 1, 1),
      height: bh,
      fill: '#0969da'
    });
    bar.appendChild(svg('title', {}, `${fmtNum(h.edges[i])} to ${fmtNum(h.edges[i + 1])}: ${c}`));
    root.appendChild(bar);
  });
  root.appendChild(svg('line', { x1: 4, y1: plotH, x2: width - 4, y2: plotH, stroke: '#8c959f' }));
  root.appendChild(svg('text', { x: 4, y: height - 4 }, fmtNum(h.edges[0])));
  root.appendChild(
    svg('text', { x: width - 4, y: height - 4, 'text-anchor': 'end' }, fmtNum(h.edges[h.edges.length - 1]))
  );
  return root;
}

function valuesView(t: ITensorReview): HTMLElement {
  const v = t.values as Nested;
  if (t.shape.length === 1 && Array.isArray(v)) {
    return table(
      v.map((_, i) => String(i)),
      [v.map(x => nestedText(x))],
      'fednb-table fednb-values fednb-numbers'
    );
  }
  if (t.shape.length === 2 && Array.isArray(v)) {
    return table(
      ['', ...Array.from({ length: t.shape[1] }, (_, j) => String(j))],
      v.map((row, i) => [String(i), ...(row as Nested[]).map(nestedText)]),
      'fednb-table fednb-values fednb-numbers'
    );
  }
  return el('code', { cls: 'fednb-values fednb-mono', text: nestedText(v) });
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
  const box = el('div', { cls: 'fednb-summary-box' }, [
    table(
      cells.map(c => c[0]),
      [cells.map(c => fmtNum(c[1]))],
      'fednb-table fednb-summary fednb-numbers'
    )
  ]);
  box.appendChild(
    s.histogram ? (histogramSvg(s.histogram) as unknown as HTMLElement) : el('i', { text: 'no finite values' })
  );
  return box;
}

/** One released array's memorisation check in words (the same as the CLI and the console). */
export function nearestText(t: INearestTensor): string {
  if (!t.checked) {
    return 'no finite values to check';
  }
  if (!t.matches) {
    const n = t.nearest;
    return (
      'no value equals a private value' +
      (n ? `; the nearest, ${fmtNum(n.value)}, is ${fmtNum(n.distance)} from a value of ${n.variable}` : '')
    );
  }
  const what = `${t.matches} of ${t.checked} values equal private values of ${t.variables.join(', ')}`;
  if (!t.rare_matches) {
    return `${what} (values many entries share)`;
  }
  const where = t.examples.map(e => `[${e.index.join(', ')}] ${fmtNum(e.value)}`).join('; ');
  return `${what}; ${t.rare_matches} held by few entries, e.g. ${where}`;
}

/** The check's badge: red when it copies rare private values, amber for common ones. */
export function checkBadge(t: INearestTensor): { tone: Tone; label: string } {
  if (t.rare_matches) {
    return { tone: 'danger', label: 'copies private values' };
  }
  return t.matches ? { tone: 'raw', label: 'common private values' } : { tone: 'ok', label: 'no private values' };
}

function checks(r: IResultReview): Map<string, INearestTensor> {
  return new Map((r.nearest?.tensors ?? []).map(t => [t.name, t]));
}

function checkView(t: INearestTensor | undefined, short = false): HTMLElement | null {
  if (!t) {
    return null;
  }
  const b = checkBadge(t);
  return el('div', { cls: 'fednb-check', attrs: { 'data-check': b.tone } }, [
    badge(b.label, b.tone),
    short ? null : el('span', { cls: 'fednb-request-meta', text: nearestText(t) })
  ]);
}

function shapeText(t: ITensorReview): string {
  return `(${t.shape.join(', ')})`;
}

function tensorView(t: ITensorReview, check: INearestTensor | undefined): HTMLElement {
  return el('div', { cls: 'fednb-tensor', attrs: { 'data-tensor': t.name } }, [
    el('div', {}, [
      el('b', { cls: 'fednb-mono', text: t.name }),
      el('span', { cls: 'fednb-request-meta', text: ` ${t.dtype} ${shapeText(t)}, ${plural(t.size, 'value')}` })
    ]),
    checkView(check),
    t.values !== null ? valuesView(t) : summaryView(t)
  ]);
}

/** A released array in one cell: its values when few, else its range and mean. */
export function shortValues(t: ITensorReview): string {
  if (t.values !== null) {
    const text = nestedText(t.values);
    return text.length <= 48 ? text : `${text.slice(0, 47)}…`;
  }
  return `${fmtNum(t.summary.min)} … ${fmtNum(t.summary.max)}, mean ${fmtNum(t.summary.mean)}`;
}

/** The tone of a held result's decision: red on a memorisation warning, blue with DP, amber without. */
export function resultTone(r: IResultReview): Tone {
  return r.nearest?.warning ? 'danger' : r.run.epsilon !== null ? 'dp' : 'raw';
}

function checkFact(r: IResultReview): HTMLElement {
  if (!r.nearest) {
    return el('span', { cls: 'fednb-request-meta', text: 'not checked by this domain' });
  }
  if (r.nearest.warning) {
    const names = r.nearest.tensors
      .filter(t => t.rare_matches)
      .map(t => t.name)
      .join(', ');
    return el('span', {}, [
      badge('warning', 'danger'),
      el('b', { text: names }),
      el('span', { text: " hold values equal to private values few entries share: the code may copy patients' data" })
    ]);
  }
  return el('span', {}, [
    badge('checked', 'ok'),
    el('span', { text: 'no released value equals a rare private value' })
  ]);
}

function releasedTable(r: IResultReview): HTMLElement | null {
  if (!r.tensors.length) {
    return null;
  }
  const byName = checks(r);
  const head = ['released', 'dtype and shape', 'values', ...(r.nearest ? ['private values'] : [])];
  return el('table', { cls: 'fednb-table fednb-released' }, [
    el('thead', {}, [
      el(
        'tr',
        {},
        head.map(h => el('th', { text: h }))
      )
    ]),
    el(
      'tbody',
      {},
      r.tensors.map(t =>
        el('tr', {}, [
          el('td', { cls: 'fednb-mono', text: t.name }),
          el('td', { text: `${t.dtype} ${shapeText(t)}` }),
          el('td', { cls: 'fednb-mono', text: shortValues(t) }),
          r.nearest ? el('td', {}, [checkView(byName.get(t.name), true)]) : null
        ])
      )
    )
  ]);
}

/** The decision: what leaves, to whom, from where, at what ε, and whether it copies private values. */
export function decisionView(r: IResultReview): HTMLElement {
  const dp = r.run.epsilon !== null;
  return el('div', { cls: `fednb-decision fednb-tone-${resultTone(r)}` }, [
    el('div', { cls: 'fednb-headline' }, [
      el('span', { text: 'Releasing sends ' }),
      el('span', { text: releasedText(r) })
    ]),
    factsList([
      ['Dataset', `${r.run.dataset} (${fmtNum(r.run.num_examples)} examples)`],
      [
        'ε charged',
        el('span', {}, [
          badge(dp ? 'DP' : 'no DP', dp ? 'dp' : 'raw'),
          el('span', { text: epsilonText(r.run.epsilon) })
        ])
      ],
      [
        'Produced by',
        `${r.request.function_name} (${r.request.kind}) · parameters ${paramsText(r.run.params)} · sha256 ${r.request.code_hash.slice(0, 16)}… · run ${r.run.id}`
      ],
      ['Private values', checkFact(r)]
    ]),
    releasedTable(r)
  ]);
}

/** Values, metrics and the change since the previous release. */
export function reviewBodyView(r: IResultReview): HTMLElement {
  const metrics = Object.entries(r.metrics);
  const byName = checks(r);
  const released = card('What will be released', [
    ...(r.tensors.length ? r.tensors.map(t => tensorView(t, byName.get(t.name))) : [el('i', { text: 'no tensors' })]),
    el('h5', { text: 'Metrics' }),
    metrics.length
      ? table(
          metrics.map(m => m[0]),
          [metrics.map(m => fmtNum(m[1]))],
          'fednb-table fednb-numbers'
        )
      : el('i', { text: 'none' })
  ]);
  const diff = card('Change since the previous release', [], 'fednb-result-diff');
  if (r.diff && r.previous) {
    diff.appendChild(
      el('div', {
        cls: 'fednb-request-meta',
        text: `against run ${r.previous.id} (parameters ${paramsText(r.previous.params)}), released before`
      })
    );
    diff.appendChild(table(['', 'change', 'max |difference|', 'changed values'], diffRows(r)));
  } else {
    diff.appendChild(el('i', { text: 'No earlier released run of this request to compare with.' }));
  }
  return el('div', { cls: 'fednb-result-review' }, [released, diff]);
}
