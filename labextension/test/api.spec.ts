import { Fetcher, FednbApi, FednbApiError } from '../src/api';

interface ICall {
  path: string;
  method: string;
  body?: string;
}

function fake(status: number, body: unknown, calls: ICall[] = []): Fetcher {
  return async (path, init) => {
    calls.push({ path, method: init.method, body: init.body });
    return { status, json: async () => body };
  };
}

describe('FednbApi', () => {
  it('lists the domains', async () => {
    const calls: ICall[] = [];
    const api = new FednbApi(fake(200, [{ name: 'st-mary', pending: 2 }], calls));
    const domains = await api.domains();
    expect(domains[0].name).toBe('st-mary');
    expect(calls).toEqual([{ path: 'domains', method: 'GET', body: undefined }]);
  });

  it('asks for pending requests of one domain', async () => {
    const calls: ICall[] = [];
    await new FednbApi(fake(200, [], calls)).requests('st-mary', 'pending');
    expect(calls[0].path).toBe('domains/st-mary/requests?status=pending');
  });

  it('posts approve with the release mode and deny with the reason', async () => {
    const calls: ICall[] = [];
    const api = new FednbApi(fake(200, { id: 'abcdefgh12' }, calls));
    await api.approve('st-mary', 'abcdefgh12', 'auto');
    await api.deny('st-mary', 'abcdefgh12', '  too many runs  ');
    expect(calls[0]).toEqual({
      path: 'domains/st-mary/requests/abcdefgh12/approve',
      method: 'POST',
      body: JSON.stringify({ release: 'auto' })
    });
    expect(calls[1].body).toBe(JSON.stringify({ reason: 'too many runs' }));
  });

  it('refuses a blank reason without calling the server', async () => {
    const calls: ICall[] = [];
    await expect(new FednbApi(fake(200, {}, calls)).deny('st-mary', 'abcdefgh12', '   ')).rejects.toThrow(
      'give a reason'
    );
    expect(calls).toHaveLength(0);
  });

  it('refuses ids and names that could change the path', async () => {
    const api = new FednbApi(fake(200, {}));
    expect(() => api.request('st-mary', '../../etc/passwd')).toThrow(FednbApiError);
    expect(() => api.release('../x', 'abcdefgh12')).toThrow(FednbApiError);
    expect(() => api.runs('st-mary', { requestId: 'a?b=c&d' })).toThrow(FednbApiError);
  });

  it("asks for a held result's review by domain and run", async () => {
    const calls: ICall[] = [];
    const review = { run: { id: 'abcdefgh12', scientist: 'alice' }, tensors: [], metrics: {} };
    const got = await new FednbApi(fake(200, review, calls)).review('st-mary', 'abcdefgh12');
    expect(calls).toEqual([{ path: 'domains/st-mary/runs/abcdefgh12/review', method: 'GET', body: undefined }]);
    expect(got.run.scientist).toBe('alice');
    expect(() => new FednbApi(fake(200, {})).review('st-mary', '../result')).toThrow(FednbApiError);
  });

  it('builds the held-runs query', async () => {
    const calls: ICall[] = [];
    await new FednbApi(fake(200, [], calls)).runs('st-mary', { releaseState: 'held', requestId: 'abcdefgh12' });
    expect(calls[0].path).toBe('domains/st-mary/runs?release_state=held&request_id=abcdefgh12');
  });

  it("reads a domain's templates and approves one by its name", async () => {
    const calls: ICall[] = [];
    const api = new FednbApi(fake(200, { templates: [], approved: [], refusals: [] }, calls));
    await api.templates('st-mary');
    await api.approveTemplate('st-mary', 'glm.2p');
    expect(calls).toEqual([
      { path: 'domains/st-mary/templates', method: 'GET', body: undefined },
      { path: 'domains/st-mary/templates/glm.2p/approve', method: 'POST', body: undefined }
    ]);
    expect(() => api.approveTemplate('st-mary', '../users')).toThrow(FednbApiError);
    expect(() => api.approveTemplate('st-mary', 'x'.repeat(49))).toThrow(FednbApiError);
  });

  it("turns the server's error body into a FednbApiError", async () => {
    const api = new FednbApi(fake(409, { error: { code: 'conflict', message: 'request is already denied' } }));
    await expect(api.approve('st-mary', 'abcdefgh12', 'manual')).rejects.toMatchObject({
      status: 409,
      code: 'conflict',
      message: 'request is already denied'
    });
  });

  it('copes with an error that is not JSON', async () => {
    const api = new FednbApi(async () => ({
      status: 502,
      json: async () => {
        throw new SyntaxError('not json');
      }
    }));
    await expect(api.domains()).rejects.toMatchObject({ status: 502, message: 'HTTP 502' });
  });
});
