-- Customers who used an unsubscribe link (or were marked unsubscribed).
SELECT u.id
FROM users u
WHERE u.attributes->>'$.unsubscribed' = 'true'
