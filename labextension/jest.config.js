/**
 * Unit tests of the request, model, controller and view layers: no JupyterLab
 * application; the views render in jsdom (a DOM without a browser; the real-browser
 * tests are tests/lab in the Python suite).
 */
module.exports = {
  testEnvironment: 'jsdom',
  setupFiles: ['<rootDir>/test/jsdom-shims.js'],
  roots: ['<rootDir>/test'],
  transform: { '^.+\\.ts$': ['ts-jest', { tsconfig: 'tsconfig.test.json' }] }
};
