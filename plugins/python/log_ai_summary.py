# plugins/python/log_ai_summary.py
"""日志AI摘要插件"""

PLUGIN_INFO = {
    "name": "log_ai_summary",
    "version": "1.0.0",
    "type": "ai",
    "capability": ["json", "batch"],
    "author": "Logloom Team",
    "description": "使用AI分析日志并生成摘要"
}

import json
import time
from collections import deque

# 保存最近的日志
log_buffer = deque(maxlen=1000)
last_summary_time = 0
summary_interval = 3600  # 默认每小时生成一次摘要

def plugin_init():
    """初始化插件，加载AI模型"""
    global summary_interval
    
    try:
        # 尝试加载配置
        with open("plugins/python/log_ai_summary.yaml", "r") as f:
            import yaml
            config = yaml.safe_load(f)
            if "summary_interval" in config:
                summary_interval = config["summary_interval"]
                
        # 初始化AI模型（示例）
        # model = load_ai_model()
        return 0
    except Exception as e:
        print(f"初始化AI摘要插件失败: {e}")
        return 1

def plugin_process(entry):
    """处理日志条目，定期生成摘要"""
    global log_buffer, last_summary_time
    
    # 将日志加入缓冲区
    log_buffer.append(entry)
    
    current_time = time.time()
    # 检查是否应该生成摘要
    if current_time - last_summary_time >= summary_interval and len(log_buffer) > 0:
        return generate_summary(list(log_buffer))
    
    # 返回空结果表示暂不生成摘要
    return {"summary": None}

def generate_summary(logs):
    """生成日志摘要"""
    # 实际实现中，这里会调用LLM或其他AI模型
    # 简化示例：统计不同级别的日志数量
    level_counts = {}
    for log in logs:
        level = log.get("level", "INFO")
        level_counts[level] = level_counts.get(level, 0) + 1
    
    # 检测异常模式
    error_count = level_counts.get("ERROR", 0) + level_counts.get("FATAL", 0)
    has_errors = error_count > 0
    
    # 更新最后摘要时间
    global last_summary_time
    last_summary_time = time.time()
    
    # 返回摘要
    return {
        "summary": f"过去{summary_interval//60}分钟内共记录{len(logs)}条日志",
        "statistics": level_counts,
        "has_errors": has_errors,
        "error_count": error_count,
        "timestamp": last_summary_time
    }

def plugin_shutdown():
    """清理资源"""
    global log_buffer
    log_buffer.clear()
    # 释放AI模型资源
    # unload_ai_model()
    pass
