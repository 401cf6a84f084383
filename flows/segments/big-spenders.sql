-- Customers whose purchases add up to more than $500 (about the top 3% of
-- the CDNOW customers).
SELECT u.id
FROM users u
JOIN events e ON e.user_id = u.id
WHERE e.name = 'purchase'
GROUP BY u.id
HAVING SUM(e.attributes->>'$.amount') > 500
