import { IDomainSummary, IResultReview } from '../src/api';
import { signedIn } from '../src/model';
import { diffRows, epsilonText, fmtNum, nestedText, paramsText, releasedText } from '../src/review';

function review(over: Partial<IResultReview> = {}): IResultReview {
  const run = {
    id: 'run2run2run2',
    request_id: 'req1req1req1',
    scientist: 'alice',
    dataset: 'breast-cancer',
    status: 'succeeded',
    release_state: 'held',
    params: { scale: 0.5 },
    num_examples: 569,
    epsilon: null,
    created: '2024-01-01T00:00:00',
    finished: null
  };
  return {
    version: 1,
    run,
    request: {
      id: 'req1req1req1',
      function_name: 'fixed_update',
      kind: 'update',
      code_hash: 'ab'.repeat(32),
      source: 'def f(): ...',
      release: 'manual',
      datasets: ['breast-cancer'],
      runs: 3,
      runs_used: 2,
      description: ''
    },
    tensors: [
      {
        name: 'w',
        shape: [2],
        dtype: 'float64',
        size: 2,
        values: [0.5, 'NaN'],
        summary: { nan: 1, inf: 0, finite: 1, min: 0.5, max: 0.5, mean: 0.5, std: 0, histogram: null }
      }
    ],
    metrics: { loss: 0.25 },
    num_examples: 569,
    previous: { ...run, id: 'run1run1run1', params: { scale: 1 }, release_state: 'released' },
    diff: {
      tensors: [{ name: 'w', status: 'changed', max_abs_diff: 0.5, changed: [{ index: [0], before: 1, after: 0.5 }] }],
      metrics: [{ name: 'loss', before: 0.5, after: 0.25 }],
      num_examples: [569, 569]
    },
    ...over
  };
}

describe('the review of a held result', () => {
  it('formats numbers as people read them, non-finite ones as sent', () => {
    expect(fmtNum(569)).toBe('569');
    expect(fmtNum(0.1 + 0.2)).toBe('0.3');
    expect(fmtNum('NaN')).toBe('NaN');
    expect(fmtNum(null)).toBe('-');
    expect(
      nestedText([
        [1, 2.5],
        ['Infinity', 0]
      ])
    ).toBe('[[1, 2.5], [Infinity, 0]]');
  });

  it('says what leaves, to whom and at what epsilon', () => {
    expect(releasedText(review())).toBe('to alice: 1 tensor (2 values), 1 metric, num_examples 569');
    expect(epsilonText(null)).toContain('no differential privacy');
    expect(epsilonText(0.5)).toContain('0.5');
    expect(paramsText({ scale: 0.5, name: 'x' })).toBe('scale=0.5, name="x"');
    expect(paramsText({})).toBe('none');
  });

  it('lists the changes since the previous release', () => {
    expect(diffRows(review())).toEqual([
      ['w', 'changed', '0.5', '[0] 1 → 0.5'],
      ['metric loss', 'changed', '', '0.5 → 0.25']
    ]);
    expect(diffRows(review({ diff: null, previous: null }))).toEqual([]);
  });
});

describe('signedIn', () => {
  const d = (user: string | null, role: 'owner' | 'scientist' | null): IDomainSummary => ({
    name: 'a',
    url: 'u',
    title: 'A',
    user,
    role,
    pending: 0,
    held: 0,
    error: null
  });
  it('says a name once when it is the role', () => {
    expect(signedIn(d('owner', 'owner'))).toBe('owner');
    expect(signedIn(d('olivia', 'owner'))).toBe('olivia (owner)');
    expect(signedIn(d(null, null))).toBe('not connected');
  });
});
