-- Customers with two or more purchases.
SELECT e.user_id AS id
FROM events e
WHERE e.name = 'purchase'
GROUP BY e.user_id
HAVING COUNT(*) >= 2
