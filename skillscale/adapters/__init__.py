"""Framework adapters: LangChain, LangGraph, CrewAI, MCP.

Each lives in its own module and imports its framework only there, so the
SDK works without any of them installed (extras ``langchain``, ``langgraph``,
``crewai``, ``mcp``).
"""
