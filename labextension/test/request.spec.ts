import { IBudget, INearestTensor, IRequestInfo, IResultReview } from '../src/api';
import { projections, projectionText, releasesText, requestDecision, specTable } from '../src/request';
import { checkBadge, nearestText, resultTone, shortValues } from '../src/review';
import { budget as fixtureBudget, request as fixtureRequest } from './fixtures';

const budget: IBudget = fixtureBudget({ dataset_cap: 20, dataset_spent: 4, dataset_remaining: 16 });

function request(over: Partial<IRequestInfo> = {}): IRequestInfo {
  return fixtureRequest({
    id: 'abcdefgh12',
    source: 'def train(data): ...',
    params: {},
    runs: 3,
    description: '',
    projected_epsilon: 3.6,
    budget,
    ...over
  });
}

const QUERY = JSON.stringify({
  aggregations: [
    { op: 'count', variable: null, bins: null, quantiles: null },
    { op: 'histogram', variable: 'age', bins: 10, quantiles: null },
    { op: 'quantile', variable: 'age', bins: null, quantiles: [0.25, 0.5] }
  ],
  noise_multiplier: 2,
  quantile_epsilon: 0.1
});

describe("a request's decision", () => {
  it('projects the request onto the budgets left, in the words of the Python meters', () => {
    const [mine, all] = projections(request());
    expect(mine).toMatchObject({ spent: 2.5, reserved: 0.5, projected: 3.6, total: 10, left: 7, over: false });
    expect(projectionText(mine)).toBe(
      'alice on breast-cancer: ε 2.5 of 10 spent, 0.5 reserved, 7 left; this request would take 3.6, leaving 3.4'
    );
    expect(all.left).toBe(16);
    expect(projectionText({ ...mine, total: null, left: null })).toBe(
      'alice on breast-cancer: ε 2.5 spent, 0.5 reserved (no cap); this request would add 3.6'
    );
  });

  it('turns red when the request would take more than is left', () => {
    const r = request({ projected_epsilon: 12 });
    const [mine] = projections(r);
    expect(mine.over).toBe(true);
    expect(projectionText(mine)).toContain('this request would take 12, 5 more than is left');
    expect(requestDecision(r).tone).toBe('danger');
  });

  it('says plainly when there is no DP', () => {
    const d = requestDecision(request({ dp: null, epsilon_per_run: null, projected_epsilon: null, budget: null }));
    expect(d.tone).toBe('raw');
    expect(d.headline).toBe('alice asks to run train (update) on breast-cancer, 3 runs');
    expect(Object.fromEntries(d.facts)['Privacy']).toContain('every result is held for your review');
    expect(requestDecision(request()).facts[1]).toEqual(['Privacy cost', 'ε 1.2 per run, ε 3.6 for 3 runs, δ 1.0e-6']);
  });

  it('lists what each run releases', () => {
    expect(releasesText(request())).toBe('w float64 (4) · metric loss in [0, 100]');
    expect(releasesText(request({ weights: null, metrics: {} }))).toBe(
      'what the function returns (no shapes declared)'
    );
    expect(releasesText(request({ kind: 'query', source: QUERY, weights: null, metrics: {} }))).toBe(
      '0:count: (count) · 1:histogram:age (histogram) · 2:quantile:age (quantile)'
    );
  });
});

describe('a spec sent as data', () => {
  it('renders a query as a table, not JSON', () => {
    const t = specTable({ kind: 'query', source: QUERY });
    expect(t?.header).toEqual(['#', 'aggregation', 'variable', 'bins / quantiles', 'released as']);
    expect(t?.rows).toEqual([
      ['0', 'count', '(all records)', '', '0:count:'],
      ['1', 'histogram', 'age', '10 bins', '1:histogram:age'],
      ['2', 'quantile', 'age', '0.25, 0.5', '2:quantile:age']
    ]);
    expect(t?.settings).toEqual([
      ['noise multiplier', '2'],
      ['quantile ε', '0.1']
    ]);
  });

  it('renders a DP-SGD model layer by layer', () => {
    const source = JSON.stringify({
      layers: [{ type: 'linear', in_features: 30, out_features: 1, bias: true }],
      loss: 'bce_with_logits',
      epochs: 2,
      noise_multiplier: 1.1
    });
    const t = specTable({ kind: 'dp-sgd', source });
    expect(t?.rows).toEqual([['0', 'linear', 'in_features=30, out_features=1, bias=true']]);
    expect(t?.settings).toEqual([
      ['loss', 'bce_with_logits'],
      ['epochs', '2'],
      ['noise_multiplier', '1.1']
    ]);
  });

  it('shows any other spec field by field', () => {
    const t = specTable({ kind: 'stats', source: JSON.stringify({ op: 'moments', variables: ['age', 'bmi'] }) });
    expect(t?.rows).toEqual([
      ['op', 'moments'],
      ['variables', '["age","bmi"]']
    ]);
  });

  it('leaves code, and a spec that does not parse, to the source view', () => {
    expect(specTable({ kind: 'update', source: 'def f(): ...' })).toBeNull();
    expect(specTable({ kind: 'query', source: '{not json' })).toBeNull();
    expect(specTable({ kind: 'stats', source: '[1, 2]' })).toBeNull();
  });
});

describe("a held result's memorisation check", () => {
  const copied: INearestTensor = {
    name: 'first',
    checked: 3,
    matches: 3,
    rare_matches: 2,
    variables: ['x'],
    examples: [
      { index: [0], value: 17.99, variable: 'x', holders: 1 },
      { index: [1], value: 20.57, variable: 'x', holders: 1 }
    ],
    nearest: { index: [0], value: 17.99, private: 17.99, variable: 'x', distance: 0 }
  };
  const clean: INearestTensor = {
    ...copied,
    name: 'mean',
    matches: 0,
    rare_matches: 0,
    variables: [],
    examples: [],
    nearest: { index: [], value: 14.1273, private: 14.13, variable: 'x', distance: 0.0027 }
  };

  it('says what matched, in the words of the CLI', () => {
    expect(nearestText(copied)).toBe(
      '3 of 3 values equal private values of x; 2 held by few entries, e.g. [0] 17.99; [1] 20.57'
    );
    expect(nearestText(clean)).toBe(
      'no value equals a private value; the nearest, 14.1273, is 0.0027 from a value of x'
    );
    expect(nearestText({ ...copied, rare_matches: 0 })).toBe(
      '3 of 3 values equal private values of x (values many entries share)'
    );
    expect(nearestText({ ...clean, checked: 0 })).toBe('no finite values to check');
  });

  it('picks a badge and the decision tone', () => {
    expect(checkBadge(copied)).toEqual({ tone: 'danger', label: 'copies private values' });
    expect(checkBadge({ ...copied, rare_matches: 0 }).tone).toBe('raw');
    expect(checkBadge(clean)).toEqual({ tone: 'ok', label: 'no private values' });
    const r = { run: { epsilon: null }, nearest: null } as unknown as IResultReview;
    expect(resultTone(r)).toBe('raw');
    expect(resultTone({ ...r, run: { ...r.run, epsilon: 0.5 } })).toBe('dp');
    expect(resultTone({ ...r, nearest: { warning: true } } as unknown as IResultReview)).toBe('danger');
  });

  it('fits a released array in one cell', () => {
    const t = {
      name: 'w',
      shape: [2],
      dtype: 'float64',
      size: 2,
      values: [0.5, 'NaN'],
      summary: { nan: 1, inf: 0, finite: 1, min: 0.5, max: 0.5, mean: 0.5, std: 0, histogram: null }
    };
    expect(shortValues(t)).toBe('[0.5, NaN]');
    expect(shortValues({ ...t, values: null, summary: { ...t.summary, min: 1, max: 30.25, mean: 14.5 } })).toBe(
      '1 … 30.25, mean 14.5'
    );
    expect(shortValues({ ...t, values: Array.from({ length: 40 }, (_, i) => i) }).endsWith('…')).toBe(true);
  });
});
