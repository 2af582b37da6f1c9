// What the store and the lifecycle count as a lost or unreachable database
// (503, the last known rows kept) and what as a statement the server refused
// (the caller's mistake, passed on): the decision behind every store write's
// error, read here case by case.
import t from 'tap'
import pg from 'pg'
import { DatasourceUnavailableError } from '../lib/index.js'
import { isConnectionLoss } from '../lib/instances/database-store.js'

function serverError (code: string): pg.DatabaseError {
  const err = new pg.DatabaseError('refused', 0, 'error')
  err.code = code
  return err
}

t.test('connection exceptions and operator interventions are losses; other SQLSTATEs are not', async (t) => {
  t.equal(isConnectionLoss(serverError('08006')), true, '08006 connection failure')
  t.equal(isConnectionLoss(serverError('08P01')), true, '08P01 protocol violation')
  t.equal(isConnectionLoss(serverError('57P01')), true, '57P01 admin shutdown (pg_terminate_backend)')
  t.equal(isConnectionLoss(serverError('57P03')), true, '57P03 cannot connect now')
  t.equal(isConnectionLoss(serverError('23505')), false, '23505 unique violation: the statement was refused')
  t.equal(isConnectionLoss(serverError('42P01')), false, '42P01 undefined table')
  t.equal(isConnectionLoss(serverError('57014')), false, '57014 query canceled is no lost session')
  const noCode = new pg.DatabaseError('refused', 0, 'error')
  t.equal(isConnectionLoss(noCode), false, 'a server error without a code')
})

t.test('network errors and the driver\'s own messages are losses', async (t) => {
  t.equal(isConnectionLoss(new DatasourceUnavailableError('"acme"')), true, 'the tenancy\'s own 503')
  t.equal(isConnectionLoss(Object.assign(new Error('connect ECONNREFUSED 127.0.0.1:1'), { code: 'ECONNREFUSED' })), true, 'ECONNREFUSED')
  t.equal(isConnectionLoss(Object.assign(new Error('read ECONNRESET'), { code: 'ECONNRESET' })), true, 'ECONNRESET')
  t.equal(isConnectionLoss(new Error('Connection terminated unexpectedly')), true, 'pg\'s message when the server goes away')
  t.equal(isConnectionLoss(new Error('timeout exceeded when trying to connect')), true, 'pg-pool\'s connect timeout')
  t.equal(isConnectionLoss(Object.assign(new Error('odd'), { code: 'Eacces' })), false, 'a code that is not a system error\'s')
  t.equal(isConnectionLoss(new Error('invalid input syntax')), false, 'any other error')
  t.equal(isConnectionLoss('ECONNREFUSED'), false, 'a thrown string is no error')
  t.equal(isConnectionLoss(undefined), false)
})
