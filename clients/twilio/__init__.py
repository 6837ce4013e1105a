"""Twilio's WhatsApp: the Messages API sender, its webhook forms and signatures, and the
rules for what a message may carry (``content``) and what Twilio's JSON says
(``resources``)."""
