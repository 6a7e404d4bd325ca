/**
 * A request's decision, as its reviewer reads it first: who runs what on which data, how
 * often, what each run releases, and the privacy cost against the budgets left. The same
 * words and colours as the Inbox and the Panel console (fednb/client/_html.py). Pure
 * helpers (tested under jest, test/request.spec.ts), then DOM builders that put every
 * string in as text (dom.ts).
 */
import { IBudget, IRequestInfo } from './api';
import { el, table } from './dom';
import { formatEpsilon } from './model';

export type Tone = 'dp' | 'raw' | 'danger' | 'ok';

function plural(n: number, word: string): string {
  return `${n} ${word}${n === 1 ? '' : 's'}`;
}

/** One budget with what the request under review would add to it. */
export interface IProjection {
  label: string;
  spent: number;
  reserved: number;
  projected: number;
  /** The cap, or null without one. */
  total: number | null;
  /** What is left now (null without a cap). */
  left: number | null;
  /** True when the request would take more than is left. */
  over: boolean;
}

export function projections(r: IRequestInfo): IProjection[] {
  const b: IBudget | null | undefined = r.budget;
  if (!b) {
    return [];
  }
  const projected = r.projected_epsilon ?? 0;
  const one = (label: string, spent: number, reserved: number, total: number | null): IProjection => {
    const left = total === null ? null : Math.max(0, total - spent - reserved);
    return { label, spent, reserved, projected, total, left, over: left !== null && projected > left };
  };
  return [
    one(`${b.scientist} on ${b.dataset}`, b.epsilon_spent, b.epsilon_reserved, b.epsilon_budget),
    one(`all scientists on ${b.dataset}`, b.dataset_spent, 0, b.dataset_cap)
  ];
}

/** A budget line in the words of the Python meters ("ε 2.5 of 10 spent, ... left"). */
export function projectionText(p: IProjection): string {
  const reserved = p.reserved ? `, ${formatEpsilon(p.reserved)} reserved` : '';
  if (p.total === null || p.left === null) {
    const more = p.projected ? `; this request would add ${formatEpsilon(p.projected)}` : '';
    return `${p.label}: ε ${formatEpsilon(p.spent)} spent${reserved} (no cap)${more}`;
  }
  let text = `${p.label}: ε ${formatEpsilon(p.spent)} of ${formatEpsilon(p.total)} spent${reserved}, ${formatEpsilon(p.left)} left`;
  if (p.projected) {
    text += p.over
      ? `; this request would take ${formatEpsilon(p.projected)}, ${formatEpsilon(p.projected - p.left)} more than is left`
      : `; this request would take ${formatEpsilon(p.projected)}, leaving ${formatEpsilon(p.left - p.projected)}`;
  }
  return text;
}

/** The parsed spec of a query or DP-SGD request (its source is JSON), as a table. */
export interface ISpecTable {
  header: string[];
  rows: string[][];
  settings: [string, string][];
}

interface IAggregation {
  op: string;
  variable?: string | null;
  bins?: number | null;
  quantiles?: number[] | null;
}

export function specTable(r: Pick<IRequestInfo, 'kind' | 'source'>): ISpecTable | null {
  if (r.kind === 'update') {
    return null;
  }
  let spec: Record<string, unknown>;
  try {
    spec = JSON.parse(r.source) as Record<string, unknown>;
  } catch {
    return null; // shown as source text instead
  }
  if (!spec || typeof spec !== 'object' || Array.isArray(spec)) {
    return null;
  }
  if (r.kind === 'query' && Array.isArray(spec.aggregations)) {
    const rows = (spec.aggregations as IAggregation[]).map((a, i) => [
      String(i),
      String(a.op),
      a.variable ? String(a.variable) : '(all records)',
      a.bins ? `${a.bins} bins` : (a.quantiles ?? []).join(', '),
      `${i}:${a.op}:${a.variable ?? ''}`
    ]);
    return {
      header: ['#', 'aggregation', 'variable', 'bins / quantiles', 'released as'],
      rows,
      settings: [
        ['noise multiplier', String(spec.noise_multiplier)],
        ['quantile ε', typeof spec.quantile_epsilon === 'number' ? String(spec.quantile_epsilon) : '0.1']
      ]
    };
  }
  if (r.kind === 'dp-sgd' && Array.isArray(spec.layers)) {
    const rows = (spec.layers as Record<string, unknown>[]).map((layer, i) => [
      String(i),
      String(layer.type),
      Object.entries(layer)
        .filter(([k]) => k !== 'type')
        .map(([k, v]) => `${k}=${String(v)}`)
        .join(', ')
    ]);
    const keep = [
      'loss',
      'features',
      'target',
      'epochs',
      'batch_size',
      'lr',
      'optimizer',
      'max_grad_norm',
      'noise_multiplier'
    ];
    return {
      header: ['#', 'layer', 'settings'],
      rows,
      settings: keep.filter(k => k in spec).map(k => [k, String(spec[k])] as [string, string])
    };
  }
  // any other spec sent as a JSON object (e.g. stats): one row per field
  const text = (v: unknown): string => (typeof v === 'string' ? v : JSON.stringify(v));
  return { header: ['field', 'value'], rows: Object.entries(spec).map(([k, v]) => [k, text(v)]), settings: [] };
}

/** What each run hands back, as the request declares it. */
export function releasesText(r: IRequestInfo): string {
  let parts = Object.entries(r.weights ?? {}).map(([k, t]) => `${k} ${t.dtype} (${t.shape.join(', ')})`);
  const spec = r.kind === 'query' ? specTable(r) : null;
  if (spec) {
    parts = spec.rows.map(row => `${row[4]} (${row[1]})`);
  }
  parts = parts.concat(Object.entries(r.metrics ?? {}).map(([k, [lo, hi]]) => `metric ${k} in [${lo}, ${hi}]`));
  return parts.length ? parts.join(' · ') : 'what the function returns (no shapes declared)';
}

/** The decision card's facts and tone: amber without DP, blue with, red over a budget. */
export function requestDecision(r: IRequestInfo): { headline: string; tone: Tone; facts: [string, string][] } {
  const facts: [string, string][] = [['Each run releases', releasesText(r)]];
  let tone: Tone;
  if (r.projected_epsilon === null || r.projected_epsilon === undefined) {
    tone = 'raw';
    facts.push([
      'Privacy',
      "no DP: results are the code's exact output; every result is held for your review before it leaves"
    ]);
  } else {
    tone = 'dp';
    const delta = r.delta ? `, δ ${r.delta.toExponential(1)}` : '';
    facts.push([
      'Privacy cost',
      `ε ${formatEpsilon(r.epsilon_per_run)} per run, ε ${formatEpsilon(r.projected_epsilon)} for ${plural(r.runs, 'run')}${delta}`
    ]);
  }
  if (projections(r).some(p => p.over)) {
    tone = 'danger';
  }
  if (r.previous_hash) {
    facts.push(['Code', 'a new version of an approved function: read the diff below']);
  }
  const headline = `${r.scientist} asks to run ${r.function_name} (${r.kind}) on ${r.datasets.join(', ')}, ${plural(r.runs, 'run')}`;
  return { headline, tone, facts };
}

export function badge(text: string, tone: Tone): HTMLElement {
  return el('span', { cls: `fednb-badge fednb-tone-${tone}`, text });
}

/** Label and value pairs as a definition list (values are text or nodes). */
export function factsList(facts: [string, string | Node][]): HTMLElement {
  const dl = el('dl', { cls: 'fednb-facts' });
  for (const [k, v] of facts) {
    dl.appendChild(el('dt', { text: k }));
    dl.appendChild(typeof v === 'string' ? el('dd', { text: v }) : el('dd', {}, [v]));
  }
  return dl;
}

function bar(p: IProjection): HTMLElement | null {
  if (p.total === null || p.total <= 0) {
    return null; // no cap: the line says so, a bar would have nothing to fill
  }
  const box = el('div', { cls: 'fednb-bar', attrs: { role: 'img', 'aria-label': projectionText(p) } });
  const total = p.total;
  const part = (v: number, cls: string, room: number): number => {
    const f = Math.max(0, Math.min(room, v / total));
    if (f > 0) {
      box.appendChild(el('span', { cls, attrs: { style: `width: ${(100 * f).toFixed(1)}%` } }));
    }
    return f;
  };
  const used = part(p.spent, 'fednb-bar-spent', 1);
  const held = part(p.reserved, 'fednb-bar-reserved', 1 - used);
  part(p.projected, p.over ? 'fednb-bar-projected fednb-bar-over' : 'fednb-bar-projected', 1 - used - held);
  return box;
}

export function card(title: string, children: Node[], cls = ''): HTMLElement {
  return el('section', { cls: `fednb-card ${cls}` }, [el('h4', { text: title }), ...children]);
}

/** The decision card of a request (class fednb-request-decision). */
export function requestDecisionView(r: IRequestInfo): HTMLElement {
  const d = requestDecision(r);
  const tones: Record<string, Tone> = { pending: 'raw', approved: 'ok', denied: 'danger' };
  const facts: [string, string | Node][] = d.facts.map(([k, v]) =>
    k.startsWith('Privacy')
      ? [
          k,
          el('span', {}, [
            badge(k === 'Privacy' ? 'no DP' : 'DP', k === 'Privacy' ? 'raw' : 'dp'),
            el('span', { text: v.replace(/^no DP: /, '') })
          ])
        ]
      : [k, v]
  );
  const budgets = projections(r);
  if (budgets.length) {
    facts.push([
      'Budget',
      el(
        'div',
        {},
        budgets.flatMap(p => [el('div', { cls: p.over ? 'fednb-over' : '', text: projectionText(p) }), bar(p)])
      )
    ]);
  }
  return el('div', { cls: `fednb-decision fednb-request-decision fednb-tone-${d.tone}` }, [
    el('div', { cls: 'fednb-headline' }, [badge(r.status, tones[r.status] ?? 'dp'), el('span', { text: d.headline })]),
    factsList(facts)
  ]);
}

/** The spec of a query or DP-SGD request as tables (null for code). */
export function specView(r: IRequestInfo): HTMLElement | null {
  const spec = specTable(r);
  if (!spec) {
    return null;
  }
  const settings = spec.settings.length ? table(['setting', 'value'], spec.settings) : null;
  return card(
    `The ${r.kind} spec (what runs: no code)`,
    settings ? [table(spec.header, spec.rows), settings] : [table(spec.header, spec.rows)],
    'fednb-spec'
  );
}
