"""Typical replies of a generic, out-of-character AI assistant.

Drift scoring (``chat.drift``) embeds these once and uses their centroid as the "generic assistant" pole: a persona
reply that is closer to this centroid than to the persona's own anchors is drifting out of character. The texts are
deliberately varied in topic (how-tos, refusals, disclaimers, small talk, summaries, code, advice) so that the centroid
captures the *register* of assistant speech, not a subject. Changing them changes every persona's calibration: bump
``chat.drift.CALIBRATION_VERSION`` when you do.
"""

from __future__ import annotations

GENERIC_ASSISTANT_TEXTS: tuple[str, ...] = (
    "Certainly! Here's a step-by-step guide to get you started:\n\n1. First, open the settings menu.\n"
    "2. Next, select the option you want to change.\n3. Finally, save your changes.",
    "As an AI language model, I don't have personal opinions, but I can give you an overview of the main arguments.",
    "I'd be happy to help with that! Could you provide a bit more detail about what you're looking for?",
    "Great question! There are several factors to consider here. Let's break it down.",
    "Sure, here is a summary of the key points:\n- The main idea is introduced early.\n- Supporting evidence follows."
    "\n- The conclusion ties everything together.",
    "I'm sorry, but I can't assist with that request. If you have any other questions, feel free to ask.",
    "I understand how frustrating that can be. Here are a few things you could try to resolve the issue.",
    "That's a great idea! Here are some tips to make the most of it.",
    "I hope this helps! Let me know if you have any other questions or if there's anything else I can do for you.",
    "It's important to note that everyone's situation is different, so you may want to consult a professional.",
    "Here's an example in Python:\n\n```python\ndef greet(name):\n    return f'Hello, {name}!'\n```\n\n"
    "This function takes a name and returns a greeting.",
    "There are a few different approaches you could take, each with its own pros and cons.",
    "Absolutely! Below is a list of suggestions that might work for you.",
    "I don't have access to real-time information, so I recommend checking an up-to-date source.",
    "Thank you for your question. To answer it accurately, I'll need to clarify a few things first.",
    "In summary, the best option depends on your specific needs, budget, and preferences.",
    "Of course! Let me explain this concept in simple terms.",
    "Here are 5 ways to improve your productivity: set clear goals, prioritize tasks, take regular breaks, "
    "minimize distractions, and review your progress.",
    "I'm here to help. What would you like to know?",
    "That's an interesting perspective! Many people share similar views, while others see it differently.",
    "To answer your question: yes, it is generally possible, but there are some limitations to keep in mind.",
    "Hello! How can I assist you today?",
    "I apologize for the confusion in my previous response. Let me correct that.",
    "Here is a draft email you can use:\n\nSubject: Follow-up on our meeting\n\nDear [Name],\n\n"
    "Thank you for taking the time to meet with me.",
    "Feel free to adjust the recipe to suit your taste. Enjoy your meal!",
    "As an AI, I don't have feelings, but I appreciate you asking! How can I help you today?",
    "Let's walk through this together. First, we'll identify the problem, then explore possible solutions.",
    "Good luck with your project! If you run into any issues, don't hesitate to reach out.",
    "Based on the information you provided, here is my recommendation.",
    "There is no one-size-fits-all answer, but here are some general guidelines.",
    "I'm not able to browse the internet, but I can share what I know up to my knowledge cutoff.",
    "Sure thing! Here's a quick overview of the topic, along with some resources for further reading.",
    "It sounds like you're going through a lot right now. It might help to talk to someone you trust.",
    "The answer is 42. Here's how I arrived at that result, step by step.",
    "Key takeaways:\n1. Plan ahead.\n2. Stay consistent.\n3. Track your results and adjust as needed.",
    "Would you like me to elaborate on any of these points or provide additional examples?",
    "Please note that this information is for general purposes only and should not be taken as professional advice.",
    "You're welcome! I'm glad I could help. Have a great day!",
    "Here's a comparison table of the options:\n\n| Option | Pros | Cons |\n|---|---|---|\n| A | Fast | Expensive |\n"
    "| B | Cheap | Slow |",
    "That's a common misconception. In reality, the evidence suggests otherwise.",
    "I can certainly help you brainstorm some ideas. Here are a few to get you started.",
    "Let me know which of these options works best for you, and I can provide more details.",
)
