-- The ledger check both backends run (Storage.verify_ledger): one query, aggregates only,
-- one row (account_id, message) per broken invariant, empty when all is well. Plain SQL that
-- SQLite and PostgreSQL both accept; it reads the tables the migrations define, so a
-- migration that changes them changes this too.
WITH sums AS (
    SELECT account_id,
           SUM(CASE WHEN type IN ('top_up', 'adjustment', 'refund') THEN amount
                    WHEN type = 'charge' THEN -amount ELSE 0 END) AS balance,
           SUM(CASE WHEN type = 'hold' THEN amount
                    WHEN type IN ('release', 'charge') THEN -amount ELSE 0 END) AS locked,
           MAX(id) AS last_id
    FROM ledger GROUP BY account_id
), pending AS (
    SELECT account_id, SUM(amount) AS locked FROM holds WHERE state = 'pending'
    GROUP BY account_id
), v AS (
    SELECT a.id, a.balance, a.locked,
           COALESCE(s.balance, 0) AS ledger_balance, COALESCE(s.locked, 0) AS ledger_locked,
           COALESCE(p.locked, 0) AS pending_locked, l.balance_after, l.locked_after
    FROM accounts a
    LEFT JOIN sums s ON s.account_id = a.id
    LEFT JOIN pending p ON p.account_id = a.id
    LEFT JOIN ledger l ON l.id = s.last_id
)
SELECT id AS account_id,
       'balance ' || balance || ' != ledger total ' || ledger_balance AS message
  FROM v WHERE balance <> ledger_balance
UNION ALL
SELECT id, 'locked ' || locked || ' != ledger total ' || ledger_locked
  FROM v WHERE locked <> ledger_locked
UNION ALL
SELECT id, 'locked ' || locked || ' != pending holds ' || pending_locked
  FROM v WHERE locked <> pending_locked
UNION ALL
SELECT id, 'locked ' || locked || ' outside 0..balance ' || balance
  FROM v WHERE locked < 0 OR locked > balance
UNION ALL
SELECT id, 'last ledger row has balance ' || balance_after || ', locked ' || locked_after
           || '; account has ' || balance || ', ' || locked
  FROM v WHERE balance_after <> balance OR locked_after <> locked
UNION ALL
SELECT account_id, 'hold ' || id || ' (' || state || ') charged ' || charged
           || ' of amount ' || amount
  FROM holds WHERE charged > amount OR (state <> 'posted' AND charged <> 0)
ORDER BY 1, 2
